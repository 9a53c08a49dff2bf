"""Diagnostics (issue 5): Hessian spectra, critical points, sharpness, norm monitor.

Implementation modules; the public surface is :mod:`optzoo.diagnostics`.
"""
from optzoo._src.diagnostics._batch_size import *  # noqa: F401,F403
from optzoo._src.diagnostics._batch_size import __all__ as _bs_all
from optzoo._src.diagnostics._hessian import *  # noqa: F401,F403
from optzoo._src.diagnostics._hessian import __all__ as _h_all
from optzoo._src.diagnostics._landscape import *  # noqa: F401,F403
from optzoo._src.diagnostics._landscape import __all__ as _l_all
from optzoo._src.diagnostics._monitor import *  # noqa: F401,F403
from optzoo._src.diagnostics._monitor import __all__ as _m_all

__all__ = list(_h_all) + list(_l_all) + list(_m_all) + list(_bs_all)
