# The README's first two commands: `make demo` (the main job) and `make test` (the test suite).
.PHONY: demo test lint setup

setup:
	scripts/setup.sh

demo:
	scripts/demo.sh

test:
	scripts/setup.sh --system --export --wheelhouse
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
