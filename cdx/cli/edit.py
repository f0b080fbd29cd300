"""`cdx edit`: collaborative editing of a real face (the paper's Algorithm 3)."""
from __future__ import annotations

from pathlib import Path

import click

from ..edit.optimise import EditConfig
from ..errors import InputError
from .options import (backend_option, check_distinct, check_output_path, checkpoint_option, guidance_option,
                      parse_guidance, sampling_from, sampling_options, save_images)


@click.command()
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="The face to edit (any RGB image); not needed with --load-state.")
@click.option("--text", default=None, help="Target caption.")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Target label-map PNG.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Image file: the edited face (a sweep of --alpha: one column per alpha, labelled).")
@checkpoint_option
@backend_option()
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None, help="TensorRT engines to refit.")
@click.option("--alpha", default="0.9", show_default=True,
              help="Interpolation towards the target condition (comma-separated list for a sweep).")
@click.option("--embed-steps", type=int, default=EditConfig.embed_steps, show_default=True,
              help="Optimisation steps of the condition embeddings (Algorithm 3 (a)).")
@click.option("--embed-lr", type=float, default=EditConfig.embed_lr, show_default=True, help="In (0, 1].")
@click.option("--finetune-steps", type=int, default=EditConfig.finetune_steps, show_default=True,
              help="Fine-tuning steps of the collaborators (Algorithm 3 (b)).")
@click.option("--finetune-lr", type=float, default=EditConfig.finetune_lr, show_default=True, help="In (0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the optimisation and the noise.")
@sampling_options()
@guidance_option
@click.option("--save-influence", type=click.Path(path_type=Path), default=None,
              help="PNG grid of the first alpha's influence maps: a row per modality, a column per chosen step.")
@click.option("--save-state", type=click.Path(path_type=Path), default=None,
              help="Keep the optimised embeddings and fine-tuned weights here.")
@click.option("--load-state", type=click.Path(path_type=Path), default=None,
              help="Reuse a saved state (skips the optimisation).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cdx edit state at --save-state.")
def edit(image, text, mask, out, checkpoint, backend, engine_dir, alpha, embed_steps, embed_lr, finetune_steps,
         finetune_lr, seed, guidance, save_influence, save_state, load_state, overwrite, **settings):
    """Edit a face so that it follows a new caption and/or mask, keeping who it is."""
    from ..defaults import default_checkpoint
    from ..edit.optimise import STATE_FORMAT, load_image
    from ..edit.render import edit_backend, render_edit
    from ..export.cache import guided_cfg
    from ..io import check_folder_target
    from ..models.bundle import load_bundle
    from ..models.masks import load_label_map
    from ..validate import check_seed

    alphas = _alphas(alpha)
    guidance = parse_guidance(guidance)
    optimise = _edit_config(embed_steps, embed_lr, finetune_steps, finetune_lr, seed)
    check_seed(seed, "--seed")
    if save_state is not None and load_state is not None:
        raise InputError("--save-state with --load-state: the loaded state is saved already; drop one of them")
    if save_state is not None:
        check_folder_target(save_state, STATE_FORMAT, overwrite, "--save-state")  # before the optimisation
    check_distinct({"--out": out, "--save-influence": save_influence, "--save-state": save_state},
                   {"--image": image, "--mask": mask, "--checkpoint": checkpoint, "--engine-dir": engine_dir,
                    "--load-state": load_state}, folders=("--save-state",))
    if text is None and mask is None and load_state is None:
        raise InputError("give --text, --mask or both (the target of the edit)")
    if image is None and load_state is None:
        raise InputError("give --image (the face to edit), or --load-state with a saved edit")
    if mask is not None:
        load_label_map(mask)
    check_output_path(out)
    if save_influence:
        check_output_path(save_influence, "--save-influence")
    backend = edit_backend(backend, engine_dir, checkpoint)  # before minutes of optimisation
    ckpt = checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    model.cfg = guided_cfg(model.cfg, guidance)  # sampling only: the optimisation is unguided either way
    sampling = sampling_from(settings, model.cfg)
    img = None if load_state is not None else load_image(image, model.cfg.image_size)  # a loaded state has it
    state = _state(model, ckpt, img, image, text, mask, optimise, load_state, save_state, overwrite)
    images, influence, desc, timesteps = render_edit(model, state, alphas, backend, engine_dir, seed, sampling,
                                                     save_influence is not None)
    click.echo(desc, err=True)
    from ..render import influence_grid, labelled_strip

    # the sweep: a column per alpha, labelled; the image and its influence grid are written as one set
    outputs = [(out, images[0] if len(alphas) == 1 else labelled_strip(images, [f"alpha={a:g}" for a in alphas]))]
    if save_influence is not None:
        outputs.append((save_influence, influence_grid(influence, state.names, timesteps)))
    save_images(outputs)
    click.echo(f"wrote {out} ({', '.join(state.names)} edited; alpha {', '.join(map(str, alphas))})")


def _edit_config(embed_steps, embed_lr, finetune_steps, finetune_lr, seed) -> EditConfig:
    for flag, v in (("--embed-steps", embed_steps), ("--finetune-steps", finetune_steps)):
        if v < 0:
            raise InputError(f"{flag} {v}: out of range")
    for flag, v in (("--embed-lr", embed_lr), ("--finetune-lr", finetune_lr)):
        if not 0 < v <= 1:  # NaN fails this too
            raise InputError(f"{flag} {v}: must be a number in (0, 1]")
    return EditConfig(embed_steps, embed_lr, finetune_steps, finetune_lr, seed=seed)


def _state(model, ckpt, img, image, text, mask, optimise: EditConfig, load_state, save_state, overwrite):
    """The edit's state: loaded from --load-state, else optimised (Algorithm 3 (a), (b)) and maybe saved."""
    from ..backends.pytorch.eager import TorchRunner
    from ..edit.optimise import load_state as read_state, run_edit, save_state as write_state
    from ..models.bundle import bundle_hash
    from ..sampling.pipeline import encode_conditions
    from ..sampling.request import make_request

    if load_state is not None:
        state = read_state(load_state, model)
        if state.meta.get("bundle_hash") != bundle_hash(ckpt):
            raise InputError(f"--load-state {load_state}: made with another checkpoint; re-run the edit")
        return state
    names, contexts = encode_conditions(TorchRunner(model), make_request(model.cfg, text=text, mask=mask))
    total = len(names) * (optimise.embed_steps + optimise.finetune_steps)
    from .progress import Progress

    with Progress("optimising", total=total) as bar:
        def progress(stage, loss):
            bar.update(1, postfix=f"{stage} loss {loss:.4f}")
        state = run_edit(model, img, dict(zip(names, contexts)), optimise, progress)
    if save_state is not None:
        write_state(state, save_state, {"bundle_hash": bundle_hash(ckpt), "image": str(image), "text": text,
                                        "mask": str(mask) if mask else None}, overwrite=overwrite)
        click.echo(f"wrote edit state {save_state}")
    return state



def _alphas(text: str) -> list[float]:
    try:
        values = [float(a) for a in text.split(",")]
    except ValueError:
        raise InputError(f"--alpha {text}: expected numbers, e.g. 0.9 or 0.6,0.8,1.0") from None
    if not values or any(not -0.5 <= a <= 1.5 for a in values):
        raise InputError(f"--alpha {text}: each value must be in [-0.5, 1.5]")
    return values


command = edit
