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


def _rewrap(args: argparse.Namespace) -> int:
    from aiinfra.config import memory_settings
    from aiinfra.memory.keyspace import agent_ids
    from aiinfra.memory.schema import is_name
    from aiinfra.memory.store import memory_store

    bad = [agent_id for agent_id in args.agent or [] if not is_name(agent_id)]
    if bad:
        print(f"not an agent id: {', '.join(bad)}", file=sys.stderr)
        return 2
    store = memory_store(memory_settings())
    for agent_id in agent_ids(store.redis) if args.all else args.agent:
        moved = store.rewrap(agent_id)
        print(f"{agent_id}: {moved} entries re-sealed with key {store.codec.current_key_id}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from aiinfra.config import memory_settings
    from aiinfra.memory.keyring import rotate_keyring

    print(rotate_keyring(memory_settings()).current)
    return 0


def _retire_key(args: argparse.Namespace) -> int:
    from aiinfra.config import memory_settings
    from aiinfra.memory.keyring import KeyringError, RetirementRefused, retire_key
    from aiinfra.memory.keyspace import count_sealed_with
    from aiinfra.memory.resp import RedisClient, RedisUnavailable

    settings = memory_settings()
    redis = RedisClient(settings.redis_url, settings.redis_timeout)
    try:
        retire_key(settings, args.key_id, lambda key_id: count_sealed_with(redis, key_id))
    except (RetirementRefused, KeyringError, RedisUnavailable) as refused:
        print(f"not retired: {refused}", file=sys.stderr)
        return 1
    finally:
        redis.close()
    print(f"{args.key_id} retired")
    return 0


def _publish_model(args: argparse.Namespace) -> int:
    from aiinfra.config import embed_settings
    from aiinfra.embedding.store import publish_models

    model_ids = tuple(args.model or ["all-MiniLM-L6-v2"])
    for address in publish_models(embed_settings().model_dir, args.to, model_ids):
        print(address)
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
    publish = commands.add_parser("publish-model", help="upload built models (MODEL_DIR) to a MODEL_STORE")
    publish.add_argument("--to", required=True, help="s3://bucket/prefix, the functions' MODEL_STORE")
    publish.add_argument("--model", action="append", help="model id (repeatable; default: the fp32 model)")
    publish.set_defaults(run=_publish_model)
    rewrap = commands.add_parser("rewrap", help="re-seal agents' memories with the current key (MEMORY_KEYS)")
    agents = rewrap.add_mutually_exclusive_group(required=True)
    agents.add_argument("--agent", action="append", help="agent id (repeatable)")
    agents.add_argument("--all", action="store_true", help="every agent with a key index, on every node")
    rewrap.set_defaults(run=_rewrap)
    rotate = commands.add_parser(
        "rotate-key", help="add a new current key to the memory keyring (MEMORY_KEYS)"
    )
    rotate.set_defaults(run=_rotate_key)
    retire = commands.add_parser(
        "retire-key", help="drop a key no stored memory uses from the kms:// keyring (MEMORY_KEYS)"
    )
    retire.add_argument("key_id", help="the key id to retire (not the current one)")
    retire.set_defaults(run=_retire_key)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
