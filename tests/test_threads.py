"""snnexp asks PyTorch's OpenMP threads not to spin between parallel regions (snnexp/__init__.py: they held a core
the CPU kernels needed), unless the user chose a wait policy. The `snnexp` command imports the package before torch
(Python loads a package before its modules), so the policy is in place when OpenMP starts."""

import os
import subprocess
import sys

CHECK = "import snnexp, torch, os; print(os.environ['OMP_WAIT_POLICY'])"


def run(env_policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)


def test_passive_unless_the_user_chose():
    assert run(None).stdout.strip() == "PASSIVE"
    assert run("ACTIVE").stdout.strip() == "ACTIVE"

