"""bangerd: composition root, dispatch table, operations registry, reconcile."""
