package power

import "fmt"

// State is the block's state, plain data for snapshots.
type State struct {
	Sts, En, Cnt uint16
	SCILevel     bool
}

// Save returns a copy of the block's state.
func (p *PM) Save() (State, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s, nil
}

// Restore replaces the block's state and drives the SCI to the level it
// implies. A state with bits the block does not have is refused.
func (p *PM) Restore(s State) error {
	if s.Sts&^stsBits != 0 || s.En&^enBits != 0 || s.Cnt&^(CntSlpTyp|CntSCIEn) != 0 {
		return fmt.Errorf("power: restore: reserved bits in sts %#x, en %#x or cnt %#x", s.Sts, s.En, s.Cnt)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.Cnt |= CntSCIEn
	p.s = s
	p.updateSCI(true)
	return nil
}
