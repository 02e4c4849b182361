package sandbox

// AllowedSyscalls is the seccomp allow-list of a running godwit VMM
// (amd64), found by tracing godwit run on tiny guests and Linux guests
// (boot, console, control API, snapshots, usernet, TAP) with strace -f
// and by reading the Go runtime's system calls. clone is allowed
// separately, for threads only. What is not here — execve, fork, ptrace,
// mount, chroot, setuid, kexec, module loading, bpf, keyctl, reboot, ... —
// kills the process.
var AllowedSyscalls = []string{
	// Files and I/O (Landlock limits which files openat reaches).
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"openat", "close", "close_range", "lseek", "fstat", "newfstatat", "statx", "fstatfs", "statfs",
	"fsync", "fdatasync", "sync_file_range", "ftruncate", "fallocate", "fadvise64", "flock",
	"getdents64", "readlinkat", "faccessat", "faccessat2", "mkdirat", "unlinkat", "renameat", "renameat2",
	"linkat", "fchmod", "fchmodat", "utimensat", "getcwd",
	"copy_file_range", "sendfile", "splice", "dup", "dup2", "dup3", "fcntl", "ioctl", "pipe2",
	"memfd_create", "userfaultfd",
	// Memory.
	"mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "mlock", "munlock", "mincore", "msync",
	// Polling and events.
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "poll", "ppoll", "pselect6",
	"timerfd_create", "timerfd_settime", "timerfd_gettime",
	// Threads, time and signals (the Go runtime).
	"futex", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	"sched_yield", "sched_getaffinity", "getpid", "gettid", "getppid", "tgkill", "tkill",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack",
	"set_robust_list", "rseq", "set_tid_address", "restart_syscall", "exit", "exit_group", "getrandom", "uname",
	"getrlimit", "prlimit64", "getuid", "geteuid", "getgid", "getegid", "getgroups",
	"timer_create", "timer_settime", "timer_delete", "setitimer", "getitimer",
	// Sockets: the control API and console (already bound), live
	// migration, user-mode networking.
	"socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "shutdown",
	"getsockname", "getpeername", "getsockopt", "setsockopt",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
}
