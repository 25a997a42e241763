"""Tables derived from records only: prices, variance, attribution, comparisons.

Below the report and above the results: nothing here re-runs training or draws; the
report and the CLI present what these functions return.
"""
