"""A training clock for subprocesses (the GPU recipes' time boxes): with this folder on PYTHONPATH and
V2T_FAKE_CLOCK_S=S, every Python process that imports `v2t_jax.training.train` gets a `train.clock` that advances
S seconds at each reading, so a time-boxed run stops after the same number of steps on a fast or a loaded machine."""

import importlib.abc
import importlib.machinery
import itertools
import os
import sys

STEP_S = float(os.environ.get("V2T_FAKE_CLOCK_S", "0") or 0)


class _PatchTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "v2t_jax.training.train":
            return None
        for finder in sys.meta_path:  # the finder that would have found it (the editable install's, or the path)
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            ticks = itertools.count()
            module.clock = lambda: STEP_S * next(ticks)

        spec.loader.exec_module = exec_module
        return spec


if STEP_S > 0:
    sys.meta_path.insert(0, _PatchTrain())
