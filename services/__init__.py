"""Domain services. `services.cases` is the only writer of cases, work orders, signals and the timeline."""
