"""Release signing: plans, dependency order, the runner, the manifest and its offline verification."""
