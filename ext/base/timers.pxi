# A hashed timer wheel: one deadline per connection, O(1) arm and disarm.
#
# Idle timeouts are lazy: moving bytes only writes last_active_ms; when the deadline
# comes, the connection is re-armed at last_active_ms + idle if it was active meanwhile.
# That keeps the per-byte path free of timer work. A deadline more than one turn of the
# wheel away sits in its slot and is skipped until its turn comes round.


cdef void timer_disarm(Worker *w, int32_t i) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    if c.timer_slot == NIL:
        return
    if c.timer_prev != NIL:
        w.conns[c.timer_prev].timer_next = c.timer_next
    else:
        w.wheel[c.timer_slot] = c.timer_next
    if c.timer_next != NIL:
        w.conns[c.timer_next].timer_prev = c.timer_prev
    c.timer_slot = NIL


cdef void timer_arm(Worker *w, int32_t i, uint64_t deadline_ms) noexcept nogil:
    cdef Conn *c = &w.conns[i]
    cdef uint64_t tick = deadline_ms // TICK_MS
    cdef int32_t slot
    timer_disarm(w, i)
    if tick < w.wheel_tick:
        tick = w.wheel_tick
    slot = <int32_t>(tick & (WHEEL_SLOTS - 1))
    c.deadline_ms = deadline_ms
    c.timer_slot = slot
    c.timer_prev = NIL
    c.timer_next = w.wheel[slot]
    if c.timer_next != NIL:
        w.conns[c.timer_next].timer_prev = i
    w.wheel[slot] = i


cdef void timers_expire(Worker *w) noexcept nogil:
    # Expire every tick that has fully elapsed: whatever sits in it is due (or belongs to
    # a later turn of the wheel and stays). [may close]
    cdef uint64_t now_tick = w.now_ms // TICK_MS
    cdef uint64_t t
    cdef int32_t i, nxt
    if w.active == 0 or now_tick - w.wheel_tick > WHEEL_SLOTS:
        if w.active == 0:
            w.wheel_tick = now_tick
            return
        w.wheel_tick = now_tick - WHEEL_SLOTS
    while w.wheel_tick < now_tick:
        t = w.wheel_tick
        i = w.wheel[t & (WHEEL_SLOTS - 1)]
        while i != NIL:
            nxt = w.conns[i].timer_next
            if w.conns[i].deadline_ms // TICK_MS <= t:
                timer_disarm(w, i)
                conn_expire(w, i)
            i = nxt
        w.wheel_tick += 1
