#!/bin/sh
# Build the local Debian 12 box for the `linux` machine (vagrant-libvirt), reproducibly and cached.
#
#   sh vagrant/build-linux-box.sh [BOX_NAME]     (root; needs debootstrap, qemu-utils, e2fsprogs)
#
# The box is rebuilt only when this script changes: its SHA-256 names the output
# (vagrant/boxes/debian12-<hash>.box).  The guest boots its kernel directly (no boot loader),
# runs under TCG when UDSCOMPAT_LIBVIRT_DRIVER=qemu, and has an empty /etc/machine-id so that
# clones do not share one DHCP identity.  The Debian mirror is the one this host's apt uses
# (debootstrap's default when none is configured); no host name is written here.
set -eu

BOX_NAME=${1:-udscompat/debian12}
HERE=$(cd "$(dirname "$0")" && pwd)
HASH=$(sha256sum "$0" | cut -c1-16)
OUT="$HERE/boxes/debian12-$HASH.box"
BOOT=/var/lib/libvirt/boot
# Two runs at once: the second waits for the first's build, then finds it cached.  Every file
# another run may read appears whole (written aside, then renamed).
mkdir -p "$HERE/boxes"
exec 9>"$HERE/boxes/.lock"
flock 9

if [ -f "$OUT" ]; then
    echo "cached: $OUT"
else
    WORK=$(mktemp -d /var/tmp/udscompat-box.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    MIRROR=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\(https\{0,1\}:[^ ]*\) bookworm .*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    if [ -z "$MIRROR" ]; then
        MIRROR=$(sed -n 's/^URIs: *\(https\{0,1\}:[^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources \
            2>/dev/null | head -n 1)
    fi
    R="$WORK/rootfs"
    # No systemd-resolved: its dbus dependency breaks debootstrap; the guest needs no DNS.
    debootstrap --variant=minbase \
        --include=systemd-sysv,udev,openssh-server,python3,sudo,iproute2,linux-image-amd64,kmod,rsync \
        bookworm "$R" ${MIRROR:+"$MIRROR"}
    KVER=$(ls "$R/lib/modules" | head -n 1)
    rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
    echo udscompat-linux >"$R/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 udscompat-linux\n' >"$R/etc/hosts"
    printf '/dev/vda / ext4 defaults 0 1\n' >"$R/etc/fstab"
    mkdir -p "$R/etc/systemd/network"
    printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' >"$R/etc/systemd/network/50-dhcp.network"
    chroot "$R" systemctl enable systemd-networkd ssh
    chroot "$R" useradd -m -s /bin/bash vagrant
    echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$R/etc/sudoers.d/vagrant"
    chmod 440 "$R/etc/sudoers.d/vagrant"
    install -d -m 700 "$R/home/vagrant/.ssh"
    install -m 600 /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
        "$R/home/vagrant/.ssh/authorized_keys"
    chroot "$R" chown -R vagrant:vagrant /home/vagrant/.ssh
    echo 'UseDNS no' >"$R/etc/ssh/sshd_config.d/vagrant.conf"
    : >"$R/etc/machine-id"
    mkdir -p "$WORK/box" "$HERE/boxes"
    # Kept beside the box: the box boots them from $BOOT, refreshed on every run below.
    cp "$R/boot/vmlinuz-$KVER" "$WORK/vmlinuz" && mv "$WORK/vmlinuz" "$OUT.vmlinuz"
    cp "$R/boot/initrd.img-$KVER" "$WORK/initrd" && mv "$WORK/initrd" "$OUT.initrd"
    truncate -s 3G "$WORK/root.raw"
    mkfs.ext4 -q -L root -d "$R" "$WORK/root.raw"
    qemu-img convert -c -O qcow2 "$WORK/root.raw" "$WORK/box/box.img"
    rm "$WORK/root.raw"
    echo '{"provider":"libvirt","format":"qcow2","virtual_size":3}' >"$WORK/box/metadata.json"
    cat >"$WORK/box/Vagrantfile" <<VF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = "$BOOT/udscompat-debian12-$HASH.vmlinuz"
    libvirt.initrd = "$BOOT/udscompat-debian12-$HASH.initrd"
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0"
  end
end
VF
    tar -C "$WORK/box" -czf "$OUT.partial.$$" metadata.json Vagrantfile box.img
    mv "$OUT.partial.$$" "$OUT"
    echo "built: $OUT"
fi
mkdir -p "$BOOT"
for part in vmlinuz initrd; do
    cp "$OUT.$part" "$BOOT/.udscompat-debian12-$HASH.$part.$$"
    mv "$BOOT/.udscompat-debian12-$HASH.$part.$$" "$BOOT/udscompat-debian12-$HASH.$part"
done
flock -u 9
vagrant box add --force --name "$BOX_NAME" "$OUT"
