
import atexit as _atexit
import os as _os
import shutil as _shutil
import sys as _sys
import tempfile as _tempfile

if "pytest" not in _sys.modules:
    # Under trial: hypothesis would keep its files in the directory trial was
    # started from (the checkout), since test modules are imported before
    # trial moves into _trial_temp.  tests/conftest.py does this for pytest.
    from hypothesis import configuration as _hypothesis_configuration

    _scratch = _tempfile.mkdtemp(prefix="llmgate-trial-")
    _hypothesis_configuration.set_hypothesis_home_dir(_os.path.join(_scratch, ".hypothesis"))
    _atexit.register(_shutil.rmtree, _scratch, True)
