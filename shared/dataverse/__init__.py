"""The Dataverse Web API client: session, requests, paging, change tracking, $batch, bulk messages,
the write planner and the throttle governor. Import submodules lazily (they use requests)."""
