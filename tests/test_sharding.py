"""The concept axis is sharded over several devices and gives the same paths.

Runs the tiny search in a subprocess that sees 2 CPU devices
(``--xla_force_host_platform_device_count=2``) and compares with the same
search on this process's single device.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np

from tests import test_search

_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    assert len(jax.devices()) == 2, jax.devices()
    from tests import test_search
    result = test_search._run([0, 1, 2, 3], concepts_per_step=3)
    # K=3 rounds up to 4, a multiple of the 2 devices.
    np.savez(sys.argv[1], **result.gate_logits)
""")


def test_two_devices_match_one(tmp_path):
  out = tmp_path / "two_devices.npz"
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], check=True,
                 cwd=root, env=env, timeout=600)
  two = np.load(out)
  one = test_search._run([0, 1, 2, 3], concepts_per_step=4)
  for site, logits in one.gate_logits.items():
    np.testing.assert_allclose(two[site], logits, rtol=1e-5, atol=1e-5)
