#!/usr/bin/env bash
# Installs every host tool banger and its tests need on a fresh Debian 12 machine (run as root),
# then creates the project virtualenv in .venv. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 qemu-utils          # the VMM (microvm machine, TCG) and qemu-img for overlays
  e2fsprogs fakeroot                  # mkfs.ext4 -d, debugfs, resize2fs; rootless ownership
  busybox-static cpio kmod zstd       # guest payload, initramfs assembly
  linux-image-amd64                   # the distro kernel imported as the default guest kernel
  lz4 xz-utils                        # kernel payload compressors (tests/kernels, bench)
  openssh-client openssh-server       # ssh to guests; sshd binaries for the offline image build
  mmdebstrap debian-archive-keyring   # offline default image (debian-bookworm) from the Debian mirror
  docker-registry skopeo umoci apache2-utils  # real OCI registry + fixture tooling for tests/bench
  iproute2 nftables socat git ca-certificates procps
  xfsprogs                            # a loop-mounted XFS: real reflink clones in the Firecracker raw-disk tests
  systemd util-linux passwd           # systemd-analyze verify (units), setpriv + useradd (helper tests)
  gcc libc6-dev                       # gcc -static: the guest vsock helper (Firecracker control channel)
  python3                             # /usr/bin/python3: runs proc's guard when the owner cannot exec ours
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker-registry's postinst would start a registry on :5000 with the packaged config; policy-rc.d
  # keeps package scripts from starting services (tests start their own registry on 127.0.0.1).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip==24.3.1
.venv/bin/pip install -q -e '.[dev]'
