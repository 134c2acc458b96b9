"""`aiinfra` command: serve locally, build the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("aiinfra.api.local:create_local_app", factory=True, host=args.host, port=args.port)
    return 0


def _build_model(args: argparse.Namespace) -> int:
    from aiinfra.embedding.build import build_models, default_weights_dir

    for path in build_models(default_weights_dir(), Path(args.out).resolve()):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiinfra")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve every function on one ASGI server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)
    build = commands.add_parser("build-model", help="build the ONNX models from the packaged weights")
    build.add_argument("--out", required=True, help="output directory (MODEL_DIR)")
    build.set_defaults(run=_build_model)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
