export BALSAM_ORIGINAL_PATH="$PATH"   # tasks get the user's PATH back (balsam/core/jobenv.py)
export PATH={{ balsam_bin }}:"$PATH"
export BALSAM_DB_PATH={{ db_path }}

# The launcher runs in the background so this shell can forward the scheduler's SIGTERM
# (cancel, walltime) to it: it then stops its tasks and records them RUN_TIMEOUT.
{{ python }} -m balsam launcher {{ wf_filter_flag }} --job-mode {{ job_mode }} --time-limit-minutes {{ launcher_minutes }} &
launcher=$!
trap 'kill -TERM "$launcher" 2>/dev/null' TERM INT
wait "$launcher"
status=$?
while kill -0 "$launcher" 2>/dev/null; do  # woken by a signal: wait for the launcher's exit
    wait "$launcher"
    status=$?
done
exit "$status"
