# Conveniences over the scripts the README documents.
N ?= 3
# make shards: servers, shards, replicas per chain
S ?= 4
SHARDS ?= 4
R ?= 3

.PHONY: setup test unit node cluster shards lint

setup:
	sh scripts/setup.sh

test:
	sh scripts/test.sh

unit:
	.venv/bin/pytest -q -m unit

node: setup
	.venv/bin/twistd -n --pidfile= kvnode --port 9000

cluster:
	sh scripts/setup.sh --test
	.venv/bin/python scripts/cluster.py --nodes $(N)

shards:
	sh scripts/setup.sh --test
	.venv/bin/python scripts/shards.py --servers $(S) --shards $(SHARDS) --replicas $(R)

lint:
	.venv/bin/ruff check kvtwist tests scripts benchmarks
	.venv/bin/mypy
