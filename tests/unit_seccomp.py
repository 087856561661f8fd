"""Runs a command under the system-call filters of precert's systemd unit.

Usage: unit_seccomp.py POLICY.json COMMAND ARGS...

POLICY.json (written by tests/it/systemd.rs from systemd/precert.service,
its groups expanded by `systemd-analyze syscall-filter`):
  allow     the system calls SystemCallFilter= leaves allowed (its lines
            applied in order: the first allow-list, then ~ takes away)
  errno     SystemCallErrorNumber= (what a filtered call returns)
  families  RestrictAddressFamilies= (socket(2) domains allowed)

RestrictNamespaces=yes is applied as systemd applies it: clone(2) and
unshare(2) with any CLONE_NEW* flag and setns(2) fail with EPERM, clone3(2)
with ENOSYS (its flags cannot be inspected, so the C library falls back to
clone). Needs no_new_privs (setpriv --no-new-privs) or CAP_SYS_ADMIN.
"""

import errno
import json
import os
import socket
import sys

import seccomp

CLONE_NEW = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
SPECIAL = {"clone", "clone3", "unshare", "setns", "socket"}


def main():
    policy = json.load(open(sys.argv[1]))
    command = sys.argv[2:]
    allowed = set(policy["allow"])
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, policy["errno"])))
    for name in sorted(allowed - SPECIAL):
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # not a system call of this architecture (the *32 variants)

    # RestrictNamespaces=yes
    if "clone" in allowed:
        f.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEW, 0))
    if "unshare" in allowed:
        f.add_rule(seccomp.ALLOW, "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEW, 0))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")

    # RestrictAddressFamilies=
    if "socket" in allowed:
        families = {getattr(socket, name) for name in policy["families"]}
        for family in sorted(families):
            f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
        top = max(families)
        for family in range(top):
            if family not in families:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GT, top))

    f.load()
    os.execv(command[0], command)


main()
