"""Network conditions for tests and benchmarks: impaired links (loss, delay, jitter, rate) built
into the test path, since the kernel here has no netem. Imports nothing of ours."""
