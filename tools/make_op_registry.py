"""Write bnrewrite/data/op_registry.json: every op TensorFlow registers and whether its
registry entry marks it stateful, so the safety check (bnrewrite/safety.py) knows which ops
have side effects without importing TensorFlow (`audit` never does).

Re-run after upgrading TensorFlow (the file records the version it came from)::

    .venv/bin/python tools/make_op_registry.py [--out bnrewrite/data/op_registry.json]

It also prints, for review, the registered ops that safety.py's REFUSED patterns match and
any HARMLESS op that the registry does not know or does not mark stateful.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import op_def_pb2  # noqa: E402
from tensorflow.python.client import pywrap_tf_session  # noqa: E402

from bnrewrite import safety  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(safety.__file__), "data", "op_registry.json")


def registered_ops():
    """op name -> is_stateful, for every op this TensorFlow build registers (hidden ones too)."""
    ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return {op.name: op.is_stateful for op in ops.op}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    ops = registered_ops()
    data = {"tensorflow": tf.__version__, "generated_by": "tools/make_op_registry.py",
            "stateful": sorted(op for op, stateful in ops.items() if stateful),
            "stateless": sorted(op for op, stateful in ops.items() if not stateful)}
    with open(args.out, "w") as f:
        f.write(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print("wrote %s: %d ops, %d stateful (TensorFlow %s)" % (args.out, len(ops), len(data["stateful"]),
                                                              tf.__version__))
    for family, patterns in safety.REFUSED.items():
        matched = sorted(op for op in ops if safety.matches(op, patterns))
        print("refused (%s): %s" % (family, ", ".join(matched)))
    for family, patterns in safety.HARMLESS.items():
        matched = sorted(op for op in ops if safety.matches(op, patterns) and ops[op])
        print("harmless (%s), stateful here: %s" % (family, ", ".join(matched)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
