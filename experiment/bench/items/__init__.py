"""One module per bench item, named as registry.ITEMS names it; each has run(context), which measures the item
and returns its section of the results."""
