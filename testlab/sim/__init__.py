"""The capacity simulator: the real scheduler driving a simulated lab in virtual time.

One job per module:

- `workload`: the workload file (templates are job files; arrivals; durations; faults);
- `distributions`, `arrivals`: random durations and arrival processes;
- `jobs`: every simulated job, drawn before the run so every policy gets the same ones;
- `targets`: which VM each task runs on (the one place that decides it);
- `vmstate`: the simulated VMs and hosts (the one place a simulated VM changes status);
- `simulator`: the event loop that plans with a policy and plays the engine, hypervisors and agents;
- `policies`, `fifo`: the policies compared (testlab, no-prepare, fifo);
- `bound`, `metrics`: the lower bound on the makespan and the report's numbers;
- `whatif`, `runner`: changes to compare, and running several simulations;
- `report`, `html`: the table, `--json` and the HTML report;
- `export`: a workload fitted from a real lab's history.
"""
