"""Research tools: suites and ablations (local or Ray), benchmarks, previews, weak-defect test sets."""
