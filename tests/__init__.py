"""segway's tests. A package, as is every directory below with test modules: pytest imports each
test module by its dotted name from the checkout (tests.signing.release.test_plan), so two test
files may share a basename, and shared helpers are modules of this package (tests.helpers,
tests.signing.release.release_fixtures) for the tests, the benchmarks and the compat run alike."""
