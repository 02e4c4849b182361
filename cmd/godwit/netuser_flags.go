package main

import (
	"errors"

	"github.com/godwit-vm/godwit/vmm"
)

// parseUserNetFlag parses the options after "--net user,".
func parseUserNetFlag(opts string) (*vmm.UserNetConfig, error) {
	return nil, errors.New("user-mode networking is not available yet")
}
