"""The noise schedule lives in `cdx.models.schedule` (the model defines it); this name is kept for imports."""
from ..models.schedule import *  # noqa: F401,F403
from ..models.schedule import COEFF_NAMES, PI32, StepTable  # noqa: F401  (names star-import leaves out)
