package vmm

import (
	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/memory"
)

// adviseHugePages asks for transparent huge pages behind guest RAM. KVM
// maps guest memory into its nested page tables at the host page size,
// so with 4 KiB pages every 4 KiB the guest touches for the first time
// costs a VM exit: about 29,000 of them while Debian's cloud kernel boots
// in 512 MiB, against about 2,500 with 2 MiB pages (nested harness,
// bench/boot). Guest RAM is a memfd, so this takes effect only where the
// host allows huge pages for shared memory
// (/sys/kernel/mm/transparent_hugepage/shmem_enabled set to advise or
// always; many distributions ship never). Failure is harmless.
func adviseHugePages(m *memory.Memory) {
	for _, r := range m.Regions() {
		unix.Madvise(r.Host, unix.MADV_HUGEPAGE)
	}
}
