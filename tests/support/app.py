"""A whole urdar (the composition root's Modules) for in-process tests: every data directory in
one temporary dir of the test case (nothing lands in the checkout), started on the given clock."""
import os
import shutil
import tempfile

from tests.support.threads import inline_offload
from urdar.app.config import Config
from urdar.app.modules import Modules

# Option key -> directory name under the test's temp dir.
DATA_DIRS = {"blocks_storage.tsdb.dir": "tsdb", "blocks_storage.filesystem.dir": "blocks",
             "blocks_storage.bucket_store.sync_dir": "tsdb-sync", "compactor.data_dir": "compactor",
             "ruler_storage.filesystem.dir": "ruler",
             "alertmanager_storage.filesystem.dir": "alertmanager",
             "alertmanager.data_dir": "alertmanager-state"}


def started_modules(case, clock, settings, pools):
    """Modules built from `settings` (option key -> value, after the data dirs) with inline
    pools `pools`, started; removed with the test case."""
    root = tempfile.mkdtemp(prefix="urdar-test-")
    case.addCleanup(shutil.rmtree, root, True)
    cfg = Config()
    for key, name in DATA_DIRS.items():
        cfg.set(key, os.path.join(root, name))
    for k, v in settings.items():
        cfg.set(k, v)
    m = Modules(cfg, None, clock, inline_offload(pools))
    case.successResultOf(m.start())
    return m
