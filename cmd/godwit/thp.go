package main

import "golang.org/x/sys/unix"

// noHugePagesExceptAdvised keeps transparent huge pages off godwit's own
// memory (the Go heap, goroutine stacks) while guest RAM, which asks for
// them with MADV_HUGEPAGE, keeps them: on a host whose THP setting is
// "always", every 2 MiB of heap address space godwit touches would
// otherwise take a whole huge page. It needs Linux 6.18
// (PR_THP_DISABLE_EXCEPT_ADVISED); on older kernels it does nothing, and
// GODEBUG=disablethp=1 in godwit's environment does the same for the Go
// heap. It only affects this process and the processes it starts.
func noHugePagesExceptAdvised() {
	unix.Prctl(unix.PR_SET_THP_DISABLE, 1, unix.PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0)
}
