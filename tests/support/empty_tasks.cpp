// A task library that registers no task (built without any POOLMAP_TASK): poolmap-worker must
// refuse to start with it.
extern "C" int poolmap_empty_tasks_marker() { return 0; }
