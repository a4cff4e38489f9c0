# The system user and group `$user` (home `$home`), made only if missing. Shared by both
# postinsts: `cargo xtask package` puts this file where a postinst has the line
# `#@system-user@`. Needs `$root` ($DPKG_ROOT) and `$user`, `$home` set.

# `passwd` or `group` entry NAME: from NSS on this system, from the files of another root.
entry() {
    if [ -z "$root" ]; then
        getent "$1" "$2" || true
    else
        grep "^$2:" "$root/etc/$1" 2>/dev/null || true
    fi
}

# Makes the user if missing and sets `$uid` and `$gid`. On this system a failure is fatal;
# in another root (`dpkg --root`), where making a user may be impossible, it leaves them
# empty with a warning: the caller then leaves its folders to root.
system_user() {
    if [ -z "$(entry passwd "$user")" ]; then
        # A group of that name left behind (or made by the admin) is joined, not made again.
        if [ -n "$(entry group "$user")" ]; then
            adduser_group="--ingroup $user"
            useradd_group="--gid $user"
        else
            adduser_group=--group
            useradd_group=--user-group
        fi
        if [ -n "$root" ]; then
            # adduser cannot work on another root; useradd can (--prefix, shadow >= 4.9).
            useradd --prefix "$root" --system $useradd_group --home-dir "$home" \
                --no-create-home --shell /usr/sbin/nologin "$user" || true
        elif command -v adduser >/dev/null 2>&1; then
            adduser --system $adduser_group --home "$home" --no-create-home --quiet "$user"
        else
            useradd --system $useradd_group --home-dir "$home" --no-create-home \
                --shell /usr/sbin/nologin "$user"
        fi
    fi
    uid="$(entry passwd "$user" | cut -d: -f3)"
    gid="$(entry group "$user" | cut -d: -f3)"
    if [ -z "$uid" ] || [ -z "$gid" ]; then
        if [ -z "$root" ]; then
            echo "user or group \`$user\` is missing after making it" >&2
            exit 1
        fi
        echo "no user \`$user\` in $root: its folders stay root's" >&2
        uid=
        gid=
    fi
}
