#!/usr/bin/env bash
# Set up what FLOps image builds and their tests need on a Debian machine, as root; safe to run again.
#   - buildah, skopeo, podman, runc, qemu-user-static, docker registry, mmdebstrap, docker.io, and
#     binutils for both architectures (image_builder strips shared libraries for the target)
#   - binfmt_misc mounted and qemu-aarch64 enabled (only the emulated fallback and arm64 selfchecks use it)
#   - a plain-HTTP registry on $FLOPS_REGISTRY (default 127.0.0.1:5000), a dockerd on the host network
#   - a two-arch Debian python base image pushed as $FLOPS_REGISTRY/flops/python-base:3.11 (skipped when
#     the registry already holds both architectures; built from scratch with mmdebstrap otherwise)
#   - /etc/flops/build-defaults.toml ($FLOPS_BUILD_DEFAULTS): that base image and the wheel folder
#     ($FLOPS_FIND_LINKS, default /opt/wheels) as FLOps' build defaults, so
#     `flops submit SOURCE --orchestrator docker --registry $FLOPS_REGISTRY` needs no other flag
# Prints how long each step took.
set -euo pipefail

REGISTRY="${FLOPS_REGISTRY:-127.0.0.1:5000}"
BASE_REF="$REGISTRY/flops/python-base:3.11"
# Bump when the recipe below changes: a registry holding an older base (a reused CI cache) gets it rebuilt.
BASE_RECIPE=2
SUITE="${FLOPS_BASE_SUITE:-bookworm}"  # bookworm's python3 is 3.11, the host's Python
STATE_DIR="${FLOPS_CI_STATE:-/var/lib/flops-ci}"
DEFAULTS_FILE="${FLOPS_BUILD_DEFAULTS:-/etc/flops/build-defaults.toml}"
FIND_LINKS="${FLOPS_FIND_LINKS:-/opt/wheels}"
LOG_DIR="$STATE_DIR/logs"
mkdir -p "$STATE_DIR" "$LOG_DIR"

started_all=$(date +%s)
step_started=$started_all
step() { step_started=$(date +%s); echo "== $*"; }
done_step() { echo "   done in $(( $(date +%s) - step_started )) s"; }

step "packages"
need=()
for pair in buildah:buildah skopeo:skopeo podman:podman runc:runc qemu-aarch64-static:qemu-user-static \
    update-binfmts:binfmt-support docker-registry:docker-registry mmdebstrap:mmdebstrap dockerd:docker.io \
    curl:curl x86_64-linux-gnu-strip:binutils-x86-64-linux-gnu aarch64-linux-gnu-strip:binutils-aarch64-linux-gnu \
    ip:iproute2; do  # ip and tc: `--network namespaces` and its tests (namespaces, veths, tbf)
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  echo "   installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${need[@]}" uidmap ca-certificates >"$LOG_DIR/apt.log" 2>&1 || { tail -20 "$LOG_DIR/apt.log"; exit 1; }
fi
# The packaged registry service wants htpasswd auth; ours runs on loopback with its own config instead.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
done_step

step "binfmt_misc + qemu-aarch64"
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ "$(uname -m)" != aarch64 ] && ! grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  update-binfmts --enable qemu-aarch64
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || [ "$(uname -m)" = aarch64 ] \
  || { echo "qemu-aarch64 is not enabled in binfmt_misc" >&2; exit 1; }
done_step

step "containers config: $REGISTRY is a plain-HTTP registry"
mkdir -p /etc/containers/registries.conf.d
cat >"/etc/containers/registries.conf.d/50-flops-local-${REGISTRY//[:.]/-}.conf" <<EOF
[[registry]]
location = "$REGISTRY"
insecure = true
EOF
done_step

step "registry on $REGISTRY"
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  mkdir -p "$STATE_DIR/registry"
  cat >"$STATE_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  setsid nohup docker-registry serve "$STATE_DIR/registry.yml" >"$LOG_DIR/registry.log" 2>&1 </dev/null &
  for _ in $(seq 50); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "http://$REGISTRY/v2/" >/dev/null || { tail -20 "$LOG_DIR/registry.log"; exit 1; }
fi
done_step

step "dockerd (host network only)"
if ! docker info >/dev/null 2>&1; then
  setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none \
    >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  docker info >/dev/null 2>&1 || { tail -20 "$LOG_DIR/dockerd.log"; exit 1; }
fi
done_step

has_both_arches() {
  skopeo inspect --raw --tls-verify=false "docker://$BASE_REF" 2>/dev/null \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); a={x["platform"]["architecture"] for x in m.get("manifests",[])}; sys.exit(0 if {"amd64","arm64"} <= a else 1)' 2>/dev/null \
  && skopeo inspect --tls-verify=false "docker://$BASE_REF" 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(0 if (json.load(sys.stdin).get("Labels") or {}).get("io.flops.base.recipe") == sys.argv[1] else 1)' "$BASE_RECIPE" 2>/dev/null
}

step "python base image $BASE_REF"
if has_both_arches; then
  echo "   already in the registry"
else
  work="$STATE_DIR/base-build"
  rm -rf "$work" && mkdir -p "$work"
  list="flops-python-base-list"
  buildah manifest rm "$list" >/dev/null 2>&1 || true
  buildah manifest create "$list" >/dev/null
  for arch in amd64 arm64; do
    t=$(date +%s)
    # minbase + python3, like python:3.11-slim; pip only serves the emulated-install fallback. No docs, no apt
    # lists, and /usr merged by mmdebstrap's hook rather than the usrmerge package (which pulls in all of perl).
    mmdebstrap --variant=minbase --architectures="$arch" --format=tar \
      --include=python3,python3-pip,ca-certificates \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
      "$SUITE" "$work/rootfs-$arch.tar" http://deb.debian.org/debian >"$LOG_DIR/mmdebstrap-$arch.log" 2>&1 \
      || { tail -30 "$LOG_DIR/mmdebstrap-$arch.log"; exit 1; }
    ctr=$(buildah from --arch "$arch" scratch)
    buildah add "$ctr" "$work/rootfs-$arch.tar" / >/dev/null
    buildah config --os linux --arch "$arch" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --label "io.flops.base.recipe=$BASE_RECIPE" --cmd '["python3"]' "$ctr"
    buildah commit --rm "$ctr" "localhost/flops/python-base:3.11-$arch" >/dev/null
    buildah manifest add "$list" "containers-storage:localhost/flops/python-base:3.11-$arch" >/dev/null
    echo "   $arch rootfs + image in $(( $(date +%s) - t )) s ($(du -m "$work/rootfs-$arch.tar" | cut -f1) MB tar)"
  done
  buildah manifest push --all --tls-verify=false "$list" "docker://$BASE_REF" >"$LOG_DIR/base-push.log" 2>&1 \
    || { tail -20 "$LOG_DIR/base-push.log"; exit 1; }
  rm -rf "$work"
  has_both_arches || { echo "pushed $BASE_REF but it does not list amd64 and arm64" >&2; exit 1; }
fi
done_step

step "FLOps build defaults $DEFAULTS_FILE"
mkdir -p "$(dirname "$DEFAULTS_FILE")"
{
  echo "# Written by .ci/setup-containers.sh. flops build, flops package and flops submit --orchestrator docker"
  echo "# use these unless a flag says otherwise (--base-image, --pip-find-links, --platform-constraint)."
  echo "# TLS to $REGISTRY is off through /etc/containers/registries.conf.d (insecure = true), not here."
  echo "base_image = \"$BASE_REF\""
  if [ -d "$FIND_LINKS" ]; then
    echo "# torch's CPU wheels live here: FLOps pins torch to this machine's version, +cpu, from this folder."
    echo "pip_find_links = [\"$FIND_LINKS\"]"
  fi
} >"$DEFAULTS_FILE"
sed 's/^/   /' "$DEFAULTS_FILE"
done_step

echo "== containers ready in $(( $(date +%s) - started_all )) s: registry $REGISTRY, base $BASE_REF"
echo "   try: flops submit examples/digits-cnn --orchestrator docker --registry $REGISTRY"
