"""`invoke bench`: the programs under test measured natively, side by side in one run."""
