"""Research methods from the paper list (issue 4)."""
from optzoo._src.research._group_a import *  # noqa: F401,F403
from optzoo._src.research._group_a import __all__ as _all_a
from optzoo._src.research._group_b import *  # noqa: F401,F403
from optzoo._src.research._group_b import __all__ as _all_b

__all__ = list(_all_a) + list(_all_b)
