# Counts that every worker publishes and every worker reads: the caps max_held and
# max_held_bytes are the whole proxy's, not a share of them per worker.


cdef class SharedCounts:
    """A table of counts in memory shared by the workers: a row per worker, a column
    per count (``HELD_BYTES``, then one per route for its held requests).

    Each worker writes only its own row, and only from its event loop, so no write
    races another; a reader sums the column over the rows. Two workers admitting at
    the same moment may both see room for one more: the total can pass a cap by at
    most ``workers - 1``. The supervisor zeroes a dead worker's row before its
    replacement starts, so what a killed worker held stops counting.
    """

    def __cinit__(self, object buffer, int workers, int index, int columns):
        if workers < 1 or not 0 <= index < workers or columns < 1:
            raise ValueError("SharedCounts: bad shape")
        self.view = buffer
        if self.view.shape[0] < <Py_ssize_t>workers * columns * sizeof(long long):
            raise ValueError("SharedCounts: the buffer is too small")
        self.base = <long long*>&self.view[0]
        self.workers = workers
        self.columns = columns
        self.row = self.base + <Py_ssize_t>index * columns
        for column in range(columns):
            self.row[column] = 0

    cdef inline void publish(self, int column, long long value):
        self.row[column] = value

    cdef long long total(self, int column):
        cdef long long total = 0
        cdef int worker
        for worker in range(self.workers):
            total += self.base[<Py_ssize_t>worker * self.columns + column]
        return total

    def __getitem__(self, int column):
        """The whole proxy's count in ``column`` (tests and diagnostics)."""
        if not 0 <= column < self.columns:
            raise IndexError(column)
        return self.total(column)
