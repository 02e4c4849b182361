package testvm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// CacheDir returns the directory where downloaded kernels and built
// initramfs images are kept: $GODWIT_CACHE, or $HOME/.cache/godwit (or
// os.UserCacheDir()/godwit when HOME is unset). The directory is created.
func CacheDir() (string, error) {
	dir := os.Getenv("GODWIT_CACHE")
	if dir == "" {
		if home := os.Getenv("HOME"); home != "" {
			dir = filepath.Join(home, ".cache", "godwit")
		} else {
			ucd, err := os.UserCacheDir()
			if err != nil {
				return "", fmt.Errorf("testvm: no cache directory: set GODWIT_CACHE: %w", err)
			}
			dir = filepath.Join(ucd, "godwit")
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testvm: create cache directory: %w", err)
	}
	return dir, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so a concurrent reader sees either no file or the
// whole file. Two writers racing with the same content both succeed.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// cachedBlob stores data in the cache under dir/prefix-<sha256>.ext unless
// a file with that name already exists, and returns its path.
func cachedBlob(dir, prefix, ext string, data []byte) (string, error) {
	sum := sha256.Sum256(data)
	path := filepath.Join(dir, prefix+"-"+hex.EncodeToString(sum[:12])+ext)
	if st, err := os.Stat(path); err == nil && st.Size() == int64(len(data)) {
		return path, nil
	}
	if err := WriteFileAtomic(path, data, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// installDir moves the fully populated temporary directory tmp to final.
// When another process installed final first, tmp is removed and final is
// used: both processes built the same content.
func installDir(tmp, final string) error {
	if err := os.Rename(tmp, final); err != nil {
		if _, statErr := os.Stat(final); statErr == nil {
			os.RemoveAll(tmp)
			return nil
		}
		os.RemoveAll(tmp)
		return fmt.Errorf("install %s: %w", final, err)
	}
	return nil
}

// hashFile returns the hex SHA-256 of a file's contents.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

var errNotFound = errors.New("not found")
