

@native
def test_the_kernel_tells_the_watchdog_of_a_chained_start_only_as_it_begins(tmp_path):
    # The watchdog counts a ?JOBID as started if this process dies: a chained start is
    # announced by the spawning thread just before it is made, never while it waits (one that
    # is withdrawn is never announced).
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    poller = select.epoll()
    spawns = spawn_native.make({"PATH": os.environ["PATH"]}, poller)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def notes() -> bytes:
        try:
            return os.read(read_end, 4096)
        except BlockingIOError:
            return b""

    def submit(work: Work, **kwargs: Any) -> None:
        spawns.submit(work.job_id, work.argv, work.workdir, work.output_path, False, {}, (0,),
                      **kwargs)

    taken: dict[str, Any] = {}
    try:
        assert isinstance(spawns, spawn_native.NativeSpawns)
        spawns.watch(write_end)
        submit(gated(tmp, "g0", gate))
        submit(marking(tmp, "f1"), after_job="g0", note=b"?f1\n")
        submit(marking(tmp, "f2"), after_job="f1", note=b"?f2\n")
        wait_for(lambda: taken.update({s.job_id: s for s in spawns.collect()}) or "g0" in taken,
                 60, "g0 started")
        assert notes() == b""  # f1 and f2 wait behind g0: not announced
        assert spawns.cancel("f2") and spawns.chained_ids() == ["f1"]
        open(gate, "w").close()
        wait_for(lambda: taken.update({s.job_id: s for s in spawns.collect()}) or "f1" in taken,
                 60, "f1 started")
        assert notes() == b"?f1\n" and spawns.in_flight == 0
        taken["f1"].task.wait()
        taken["g0"].task.wait()
    finally:
        spawns.close()
        os.close(read_end)
        os.close(write_end)
        poller.close()
    assert not os.path.exists(os.path.join(tmp, "f2.ran"))
