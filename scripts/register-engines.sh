#!/usr/bin/env bash
# Registers Bulkhead as a runtime with Docker and podman without clobbering existing settings.
#
#   scripts/register-engines.sh [RUNTIME_PATH]     (default /usr/local/bin/bulkhead)
#
# Docker: adds runtimes.bulkhead to /etc/docker/daemon.json (restart dockerd to use it:
#   docker run --runtime bulkhead …). podman: adds `bulkhead` under [engine.runtimes] in
#   /etc/containers/containers.conf (podman --runtime bulkhead run …). Idempotent; other keys,
#   runtimes and comments are kept. Paths can be redirected for tests with BULKHEAD_DOCKER_JSON and
#   BULKHEAD_CONTAINERS_CONF.
set -euo pipefail
runtime=${1:-/usr/local/bin/bulkhead}
docker_json=${BULKHEAD_DOCKER_JSON:-/etc/docker/daemon.json}
containers_conf=${BULKHEAD_CONTAINERS_CONF:-/etc/containers/containers.conf}

python3 - "$runtime" "$docker_json" "$containers_conf" <<'PY'
import json, os, re, sys, tempfile

runtime, docker_json, containers_conf = sys.argv[1:4]

def write_atomic(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, path)

# Docker: JSON, merge one key.
cfg = {}
if os.path.exists(docker_json) and open(docker_json).read().strip():
    try:
        cfg = json.load(open(docker_json))
    except ValueError as e:
        sys.exit(f"register-engines: {docker_json} is not valid JSON ({e}); not touching it")
cfg.setdefault("runtimes", {})["bulkhead"] = {"path": runtime}
write_atomic(docker_json, json.dumps(cfg, indent=2) + "\n")

# podman: TOML, edited as text so comments and unknown keys survive.
text = open(containers_conf).read() if os.path.exists(containers_conf) else ""
entry = f'bulkhead = ["{runtime}"]'
lines = text.splitlines()
start = next((i for i, l in enumerate(lines) if l.strip() == "[engine.runtimes]"), None)
if start is None:
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"\n[engine.runtimes]\n{entry}\n"
else:
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    found = [i for i in range(start + 1, end) if re.match(r"\s*bulkhead\s*=", lines[i])]
    if found:
        lines[found[0]] = entry
    else:
        lines.insert(start + 1, entry)
    text = "\n".join(lines) + "\n"
write_atomic(containers_conf, text)
print(f"register-engines: bulkhead ({runtime}) registered in {docker_json} and {containers_conf}")
PY
