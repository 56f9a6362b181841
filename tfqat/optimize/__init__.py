"""3. Optimization: built float model -> QAT model (`qat`), pruned model (`prune`), or both
(pruning-preserving QAT). May import `models`; model code never imports this."""
