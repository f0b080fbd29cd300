"""`cdx data check DIR`: every sample read as training reads it (the modality registry's parsers), every
problem named, class histograms of the label maps and the captions' vocabulary."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..models.masks import CLASS_NAMES
from ..models.modalities import kind_of
from .data import encode_sample, trainable
from .sources import Problem, SampleError, Source, field_value

WORD = re.compile(r"[a-z0-9'-]+")


@dataclass
class Report:
    source: Source
    modalities: list[str]  # the preset's modalities the data can train
    untrained: list[str]  # the preset's modalities whose files are absent
    usable: int = 0
    problems: list[Problem] = field(default_factory=list)
    classes: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (2, C): pixel share, maps with it
    words: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)  # words the tokenizer maps to [UNK]
    captions: int = 0

    def lines(self, top: int = 15) -> list[str]:
        s = self.source
        out = [f"{s.describe()}",
               f"usable samples: {self.usable} of {len(s)} images; problems: {len(self.problems)}",
               f"trains: {', '.join(self.modalities) or 'nothing'}"
               + (f"; not trained (no files): {', '.join(self.untrained)}" if self.untrained else "")]
        out += [f"  bad {p.name}: {p.reason}" for p in self.problems]
        for name, hist in self.classes.items():
            out.append(f"{name} classes (share of 32x32 pixels, maps with the class):")
            for c, (share, maps) in enumerate(hist.T):
                label = CLASS_NAMES[c] if len(hist.T) == len(CLASS_NAMES) else str(c)
                out.append(f"  {c:2d} {label:<10} {share:7.3%} {int(maps):6d}")
        if self.captions:
            common = ", ".join(f"{w} {n}" for w, n in self.words.most_common(top))
            out.append(f"captions: {self.captions}, vocabulary {len(self.words)} words; most common: {common}")
            if self.unknown:
                out.append(f"words the tokenizer does not know ([UNK]): {', '.join(sorted(self.unknown))}")
        return out


def check(source: Source, cfg, size: int) -> Report:
    """Read every sample of `source` for the modalities of `cfg` it can train."""
    mods = trainable(cfg, source)
    report = Report(source, [m.name for m in mods], [m.name for m in cfg.modalities if m not in mods],
                    problems=list(source.problems))
    onehot = [m for m in mods if kind_of(m.kind).encoder_input(m).values == "onehot"]
    counts = {m.name: np.zeros((2, kind_of(m.kind).encoder_input(m).shape[0])) for m in onehot}
    ruled_out = source.bad
    for i in range(len(source)):
        if source.names[i] in ruled_out:
            continue
        try:
            _, conds = encode_sample(source, i, mods, size)
        except SampleError as e:
            report.problems.append(Problem(e.name, e.reason))
            continue
        report.usable += 1
        for m in onehot:
            c = np.bincount(conds[m.name][0].astype(np.int64), minlength=counts[m.name].shape[1])
            counts[m.name][0] += c / c.sum()
            counts[m.name][1] += c > 0
        if "caption" in source.fields:
            for caption in field_value("caption", source.raw(i)["caption"], source.names[i]):
                report.captions += 1
                report.words.update(WORD.findall(caption.lower()))
    for name, c in counts.items():
        report.classes[name] = np.stack([c[0] / max(report.usable, 1), c[1]])
    report.unknown = _unknown(report.words)
    return report


def _unknown(words: Counter) -> Counter:
    if not words:
        return Counter()
    from ..models.tokenizer import UNK_ID, Tokenizer

    vocab = sorted(words)
    ids, _ = Tokenizer().encode(vocab)
    return Counter({w: words[w] for w, row in zip(vocab, ids) if UNK_ID in row})
