"""deface stage: remove the face from every structural image, or withhold it (fail closed).

Public API: `deface_image`, `deface_session`, `DefaceRecord` (bidsafe.deface.engine); the guards' thresholds
live in bidsafe.deface.guards, the registration in bidsafe.deface.register.
"""

from bidsafe.deface.engine import DefaceRecord, deface_image, deface_session, deface_targets

__all__ = ["DefaceRecord", "deface_image", "deface_session", "deface_targets"]
