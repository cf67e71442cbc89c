"""Deploy the OpenAI-compatible endpoint onto a Ray cluster as a job (config → Serve app → URL).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/serve.py rayjobs/configs/serve.yaml
    python rayjobs/serve.py rayjobs/configs/serve.yaml --block port=8001   # local cluster, Ctrl-C stops

Serve applications outlive the job that deployed them: without `--block` the job deploys, waits
until /health answers, prints the URL and exits, and the app keeps serving on the cluster
(`serve shutdown` or `serve delete rayalign` removes it). With `--block` it serves until Ctrl-C and
then shuts down cleanly, like `rayalign serve`.
"""

from __future__ import annotations

import sys

from rayalign.config import ConfigError


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--block"]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    if "--block" in argv:
        from rayalign.serve.cli import main as serve_main

        return serve_main(["--config", args[0], *args[1:]])
    from rayalign.config import load_config
    from rayalign.serve.config import ServeConfig
    from rayalign.serve.server import start

    try:
        cfg = load_config(ServeConfig, args[0], args[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return e.exit_code
    url = start(cfg)
    print(f"serving {cfg.model_name} ({cfg.backend}) at {url}/v1 (app {cfg.app_name!r} stays up after this job)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
