"""The benchmark (issue 7): `./run bench` — see docs/performance.md."""
