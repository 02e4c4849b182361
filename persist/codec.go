// Package persist is godwit's persist contract and snapshot state format.
//
// # The contract
//
// Every device package has a persist.go with the same shape:
//
//	// State is the device's saveable state: guest addresses, indices and
//	// register values, never host pointers or file descriptors.
//	type State struct { ... }
//
//	// Save returns the device's state. The device is quiesced (paused):
//	// no host-side work is in flight.
//	func (d *Device) Save() (State, error)
//
//	// Restore loads s into a device just built by New with the same
//	// constructor arguments. The device stays quiet (no interrupt, no
//	// worker) until the VM resumes.
//	func (d *Device) Restore(s State) error
//
// The VMM registers each device under a stable id (for example
// "platform/uart0" or "pci/0000:00:01.0/virtio-blk") and writes one
// section per id into the snapshot's state file (see File).
//
// # The encoding
//
// A state struct is encoded by Marshal: its exported fields in declaration
// order, little endian, fixed width (bool and int8/uint8 one byte, 16-,
// 32- and 64-bit integers two, four and eight bytes), arrays element by
// element, slices and strings as a uint32 count followed by the elements.
// Maps, pointers, interfaces, floats and unexported fields are refused:
// state is plain data. Unmarshal is the inverse and trusts nothing: every
// count is checked against the bytes left before anything is allocated,
// and trailing bytes are an error. A change to a state struct's fields
// changes its encoding, so it must come with a new section version; the
// golden files under testdata/ catch a change that forgot it.
package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
)

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("corrupt snapshot state")

// MaxElems bounds the length of any one slice or string in a state
// struct.
const MaxElems = 1 << 28

// Marshal encodes a plain state struct (or any value of a supported kind).
func Marshal(v any) ([]byte, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() {
		rv = rv.Elem() // a pointer to a state struct is the struct
	}
	if !rv.IsValid() || rv.Kind() == reflect.Pointer {
		return nil, errors.New("persist: marshal of nil")
	}
	var b []byte
	var err error
	if b, err = encode(b, rv); err != nil {
		return nil, err
	}
	return b, nil
}

// MustMarshal is Marshal for types known to be plain (device state structs);
// it panics on a programming error, never on data.
func MustMarshal(v any) []byte {
	b, err := Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func encode(b []byte, v reflect.Value) ([]byte, error) {
	switch v.Kind() {
	case reflect.Bool:
		if v.Bool() {
			return append(b, 1), nil
		}
		return append(b, 0), nil
	case reflect.Int8, reflect.Uint8:
		return append(b, byte(uintOf(v))), nil
	case reflect.Int16, reflect.Uint16:
		return binary.LittleEndian.AppendUint16(b, uint16(uintOf(v))), nil
	case reflect.Int32, reflect.Uint32:
		return binary.LittleEndian.AppendUint32(b, uint32(uintOf(v))), nil
	case reflect.Int64, reflect.Uint64:
		return binary.LittleEndian.AppendUint64(b, uintOf(v)), nil
	case reflect.String:
		s := v.String()
		if len(s) > MaxElems {
			return nil, fmt.Errorf("persist: string of %d bytes is too long", len(s))
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		return append(b, s...), nil
	case reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			if v.CanAddr() {
				return append(b, v.Bytes()...), nil
			}
			for i := 0; i < v.Len(); i++ {
				b = append(b, byte(v.Index(i).Uint()))
			}
			return b, nil
		}
		var err error
		for i := 0; i < v.Len(); i++ {
			if b, err = encode(b, v.Index(i)); err != nil {
				return nil, err
			}
		}
		return b, nil
	case reflect.Slice:
		n := v.Len()
		if n > MaxElems {
			return nil, fmt.Errorf("persist: slice of %d elements is too long", n)
		}
		if err := checkType(v.Type().Elem()); err != nil {
			return nil, err
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(n))
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return append(b, v.Bytes()...), nil
		}
		var err error
		for i := 0; i < n; i++ {
			if b, err = encode(b, v.Index(i)); err != nil {
				return nil, err
			}
		}
		return b, nil
	case reflect.Struct:
		t := v.Type()
		var err error
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				if f.Name == "_" {
					// Padding of a mirrored kernel struct: encoded as zeros.
					if b, err = encode(b, reflect.Zero(f.Type)); err != nil {
						return nil, err
					}
					continue
				}
				return nil, fmt.Errorf("persist: %s.%s is unexported: state structs hold exported plain fields", t, f.Name)
			}
			if b, err = encode(b, v.Field(i)); err != nil {
				return nil, fmt.Errorf("%s.%w", t.Name(), err)
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("persist: %s is not plain state (kind %s)", v.Type(), v.Kind())
}

func uintOf(v reflect.Value) uint64 {
	switch v.Kind() {
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return uint64(v.Int())
	}
	return v.Uint()
}

// checkType refuses kinds the encoding does not have, so that an empty
// slice of an unsupported type fails as loudly as a full one.
func checkType(t reflect.Type) error {
	switch t.Kind() {
	case reflect.Bool, reflect.Int8, reflect.Uint8, reflect.Int16, reflect.Uint16,
		reflect.Int32, reflect.Uint32, reflect.Int64, reflect.Uint64, reflect.String:
		return nil
	case reflect.Array, reflect.Slice:
		return checkType(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() && f.Name != "_" {
				return fmt.Errorf("persist: %s.%s is unexported", t, f.Name)
			}
			if err := checkType(f.Type); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("persist: %s is not plain state (kind %s)", t, t.Kind())
}

// minSize is the fewest bytes a value of type t encodes to.
func minSize(t reflect.Type) uint64 {
	switch t.Kind() {
	case reflect.Bool, reflect.Int8, reflect.Uint8:
		return 1
	case reflect.Int16, reflect.Uint16:
		return 2
	case reflect.Int32, reflect.Uint32, reflect.String, reflect.Slice:
		return 4
	case reflect.Int64, reflect.Uint64:
		return 8
	case reflect.Array:
		n := minSize(t.Elem()) * uint64(t.Len())
		return n
	case reflect.Struct:
		var n uint64
		for i := 0; i < t.NumField(); i++ {
			n += minSize(t.Field(i).Type)
		}
		return n
	}
	return math.MaxUint32
}

// Unmarshal decodes data into the value v points to. It never panics on
// data: a short, oversized or trailing input is an error wrapping
// ErrCorrupt.
func Unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("persist: unmarshal needs a non-nil pointer")
	}
	if err := checkType(rv.Elem().Type()); err != nil {
		return err
	}
	d := decoder{b: data}
	if err := d.decode(rv.Elem()); err != nil {
		return err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after %s", ErrCorrupt, len(d.b), rv.Elem().Type())
	}
	return nil
}

type decoder struct{ b []byte }

func (d *decoder) take(n uint64, what reflect.Type) ([]byte, error) {
	if n > uint64(len(d.b)) {
		return nil, fmt.Errorf("%w: truncated in %s (%d bytes needed, %d left)", ErrCorrupt, what, n, len(d.b))
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p, nil
}

func (d *decoder) count(t reflect.Type) (int, error) {
	p, err := d.take(4, t)
	if err != nil {
		return 0, err
	}
	n := uint64(binary.LittleEndian.Uint32(p))
	if n > MaxElems {
		return 0, fmt.Errorf("%w: %s of %d elements is over the limit of %d", ErrCorrupt, t, n, MaxElems)
	}
	var each uint64 = 1
	if t.Kind() == reflect.Slice {
		each = max(minSize(t.Elem()), 1)
	}
	if n*each > uint64(len(d.b)) {
		return 0, fmt.Errorf("%w: %s claims %d elements but only %d bytes are left", ErrCorrupt, t, n, len(d.b))
	}
	return int(n), nil
}

func (d *decoder) decode(v reflect.Value) error {
	t := v.Type()
	switch t.Kind() {
	case reflect.Bool:
		p, err := d.take(1, t)
		if err != nil {
			return err
		}
		if p[0] > 1 {
			return fmt.Errorf("%w: bool byte %#x", ErrCorrupt, p[0])
		}
		v.SetBool(p[0] == 1)
	case reflect.Int8, reflect.Uint8, reflect.Int16, reflect.Uint16, reflect.Int32, reflect.Uint32, reflect.Int64, reflect.Uint64:
		size := minSize(t)
		p, err := d.take(size, t)
		if err != nil {
			return err
		}
		var x uint64
		switch size {
		case 1:
			x = uint64(p[0])
		case 2:
			x = uint64(binary.LittleEndian.Uint16(p))
		case 4:
			x = uint64(binary.LittleEndian.Uint32(p))
		default:
			x = binary.LittleEndian.Uint64(p)
		}
		switch t.Kind() {
		case reflect.Int8:
			v.SetInt(int64(int8(x)))
		case reflect.Int16:
			v.SetInt(int64(int16(x)))
		case reflect.Int32:
			v.SetInt(int64(int32(x)))
		case reflect.Int64:
			v.SetInt(int64(x))
		default:
			v.SetUint(x)
		}
	case reflect.String:
		n, err := d.count(t)
		if err != nil {
			return err
		}
		p, _ := d.take(uint64(n), t)
		v.SetString(string(p))
	case reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			p, err := d.take(uint64(t.Len()), t)
			if err != nil {
				return err
			}
			reflect.Copy(v, reflect.ValueOf(p))
			return nil
		}
		for i := 0; i < v.Len(); i++ {
			if err := d.decode(v.Index(i)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		n, err := d.count(t)
		if err != nil {
			return err
		}
		if t.Elem().Kind() == reflect.Uint8 {
			p, _ := d.take(uint64(n), t)
			v.SetBytes(append([]byte(nil), p...))
			return nil
		}
		s := reflect.MakeSlice(t, n, n)
		for i := 0; i < n; i++ {
			if err := d.decode(s.Index(i)); err != nil {
				return err
			}
		}
		v.Set(s)
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				// "_" padding: zeros, so every input has one encoding.
				p, err := d.take(minSize(f.Type), f.Type)
				if err != nil {
					return err
				}
				for _, c := range p {
					if c != 0 {
						return fmt.Errorf("%w: non-zero padding in %s", ErrCorrupt, t)
					}
				}
				continue
			}
			if err := d.decode(v.Field(i)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("persist: %s is not plain state", t)
	}
	return nil
}
