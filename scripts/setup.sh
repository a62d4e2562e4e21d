#!/bin/sh
# Set up kvtwist on a Debian machine: system packages it lacks, a virtualenv
# in .venv, and kvtwist installed there (editable, with the twistd plugin).
#   sh scripts/setup.sh              node and client
#   sh scripts/setup.sh --test       also the test tools, ZooKeeper and a C compiler
#   sh scripts/setup.sh --bench      the test tools and redis-server, for benchmarks/run.py
set -eu
cd "$(dirname "$0")/.."

with_test=no
with_bench=no
[ "${1:-}" = "--test" ] && with_test=yes
[ "${1:-}" = "--bench" ] && with_test=yes && with_bench=yes

need=""
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need="$need python3-venv"
fi
# the private ZooKeeper of the tests needs java, the server jar and its jute jar
if [ "$with_test" = yes ]; then
    need_zk=no
    command -v java >/dev/null 2>&1 || need_zk=yes
    for jar in zookeeper.jar zookeeper-jute.jar; do
        [ -f "/usr/share/java/$jar" ] || need_zk=yes
    done
    if [ "$need_zk" = yes ]; then
        need="$need zookeeper"
    fi
    # wall-clock steps of one node (tests, kvtwist-torture's clock-step) build
    # a small preload library from kvtwist/verify/wallclock.c
    command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
    # the RESP port's tests run redis-cli against a chain
    command -v redis-cli >/dev/null 2>&1 || need="$need redis-tools"
    # the status page's test loads it in a headless browser
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
fi
# the RESP benchmark compares a node with a private redis-server (not the tests)
if [ "$with_bench" = yes ]; then
    command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
fi
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extra=""
[ "$with_test" = yes ] && extra="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extra" --config-settings editable_mode=compat
