// Package engine is a small secrets engine and auth method on OpenBao's SDK, written the way
// plugin authors write theirs: a framework.Backend with paths, existence checks, Storage and
// a periodic function. The tests and the demo of vault-plugin-shim run it under a real
// OpenBao, directly and through the launcher, multiplexed or not.
//
// Paths (under the mount; auth/<mount>/ for the auth method):
//
//	version      read: version, pid, exe, multiplexed, backend_uuid, periodic_runs
//	kv/          list: the keys
//	kv/<key>     create/update (field value; the existence check decides which, and the
//	             answer says which ran), read (value, written_by, served_by), delete
//	periodic     read: what the periodic function last stored (runs, last_by)
//	slow         read: answers served_by after ms milliseconds (at most 5000): a call that
//	             is surely in flight when a hot swap switches processes
//	login        auth method only, unauthenticated: field name; a token whose metadata
//	             names the version, and the number of logins of that name (in Storage)
package engine

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/openbao/openbao/sdk/v2/framework"
	"github.com/openbao/openbao/sdk/v2/logical"
)

// Backend is one mount's instance; a multiplexed process holds one per mount.
type Backend struct {
	*framework.Backend
	version     string
	multiplexed bool
	uuid        string
	runs        atomic.Int64
}

// Factory makes the backends of kind "secret" or "auth" reporting version (vX.Y.Z).
func Factory(kind, version string, multiplexed bool) logical.Factory {
	return func(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
		b := New(kind, version, multiplexed)
		if err := b.Setup(ctx, conf); err != nil {
			return nil, err
		}
		b.uuid = conf.BackendUUID
		return b, nil
	}
}

// New builds the framework.Backend of kind "secret" or "auth".
func New(kind, version string, multiplexed bool) *Backend {
	b := &Backend{version: version, multiplexed: multiplexed}
	b.Backend = &framework.Backend{
		Help:           "vault-plugin-shim's SDK test engine " + version,
		BackendType:    logical.TypeLogical,
		RunningVersion: version,
		PeriodicFunc:   b.periodic,
		Paths: []*framework.Path{
			{
				Pattern: "version",
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: b.readVersion},
				},
			},
			{
				Pattern: "kv/?$",
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ListOperation: &framework.PathOperation{Callback: b.list},
				},
			},
			{
				Pattern: "kv/" + framework.GenericNameRegex("key"),
				Fields: map[string]*framework.FieldSchema{
					"key":   {Type: framework.TypeString, Description: "the key"},
					"value": {Type: framework.TypeString, Description: "the value"},
				},
				ExistenceCheck: b.exists,
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.CreateOperation: &framework.PathOperation{Callback: b.write("create")},
					logical.UpdateOperation: &framework.PathOperation{Callback: b.write("update")},
					logical.ReadOperation:   &framework.PathOperation{Callback: b.read},
					logical.DeleteOperation: &framework.PathOperation{Callback: b.remove},
				},
			},
			{
				Pattern: "slow",
				Fields: map[string]*framework.FieldSchema{
					"ms": {Type: framework.TypeInt, Default: 300, Description: "how long to take"},
				},
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: b.slow},
				},
			},
			{
				Pattern: "periodic",
				Operations: map[logical.Operation]framework.OperationHandler{
					logical.ReadOperation: &framework.PathOperation{Callback: b.readPeriodic},
				},
			},
		},
	}
	if kind == "auth" {
		b.BackendType = logical.TypeCredential
		b.PathsSpecial = &logical.Paths{Unauthenticated: []string{"login"}}
		b.Paths = append(b.Paths, &framework.Path{
			Pattern: "login",
			Fields: map[string]*framework.FieldSchema{
				"name": {Type: framework.TypeString, Description: "who logs in"},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.login},
			},
		})
	}
	return b
}

type record struct {
	Value     string `json:"value"`
	WrittenBy string `json:"written_by"`
}

func (b *Backend) readVersion(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	exe, _ := os.Executable()
	return &logical.Response{Data: map[string]interface{}{
		"version":       b.version,
		"pid":           os.Getpid(),
		"exe":           exe,
		"multiplexed":   b.multiplexed,
		"backend_uuid":  b.uuid,
		"periodic_runs": b.runs.Load(),
	}}, nil
}

func (b *Backend) slow(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	ms := d.Get("ms").(int)
	if ms < 0 || ms > 5000 {
		return logical.ErrorResponse("ms must be 0 to 5000"), nil
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &logical.Response{Data: map[string]interface{}{"served_by": b.version, "ms": ms}}, nil
}

func (b *Backend) exists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	entry, err := req.Storage.Get(ctx, "kv/"+d.Get("key").(string))
	return entry != nil, err
}

func (b *Backend) write(operation string) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		key := d.Get("key").(string)
		entry, err := logical.StorageEntryJSON("kv/"+key, record{Value: d.Get("value").(string), WrittenBy: b.version})
		if err != nil {
			return nil, err
		}
		if err := req.Storage.Put(ctx, entry); err != nil {
			return nil, err
		}
		return &logical.Response{Data: map[string]interface{}{
			"key": key, "operation": operation, "written_by": b.version,
		}}, nil
	}
}

func (b *Backend) read(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	entry, err := req.Storage.Get(ctx, "kv/"+d.Get("key").(string))
	if err != nil || entry == nil {
		return nil, err
	}
	var r record
	if err := entry.DecodeJSON(&r); err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		"value": r.Value, "written_by": r.WrittenBy, "served_by": b.version,
	}}, nil
}

func (b *Backend) remove(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return nil, req.Storage.Delete(ctx, "kv/"+d.Get("key").(string))
}

func (b *Backend) list(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keys, err := req.Storage.List(ctx, "kv/")
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(keys), nil
}

type periodicRecord struct {
	Runs   int64  `json:"runs"`
	LastBy string `json:"last_by"`
	LastAt string `json:"last_at"`
}

// periodic runs on OpenBao's rollback timer (once a minute): it counts its runs in Storage.
func (b *Backend) periodic(ctx context.Context, req *logical.Request) error {
	var p periodicRecord
	entry, err := req.Storage.Get(ctx, "periodic")
	if err != nil {
		return err
	}
	if entry != nil {
		if err := entry.DecodeJSON(&p); err != nil {
			return err
		}
	}
	b.runs.Add(1)
	p.Runs++
	p.LastBy, p.LastAt = b.version, time.Now().UTC().Format(time.RFC3339Nano)
	entry, err = logical.StorageEntryJSON("periodic", p)
	if err != nil {
		return err
	}
	return req.Storage.Put(ctx, entry)
}

func (b *Backend) readPeriodic(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	entry, err := req.Storage.Get(ctx, "periodic")
	if err != nil || entry == nil {
		return nil, err
	}
	var p periodicRecord
	if err := entry.DecodeJSON(&p); err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{"runs": p.Runs, "last_by": p.LastBy, "last_at": p.LastAt}}, nil
}

func (b *Backend) login(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if name == "" {
		return logical.ErrorResponse("name is required"), nil
	}
	var logins int64
	entry, err := req.Storage.Get(ctx, "logins/"+name)
	if err != nil {
		return nil, err
	}
	if entry != nil {
		if err := entry.DecodeJSON(&logins); err != nil {
			return nil, err
		}
	}
	logins++
	if entry, err = logical.StorageEntryJSON("logins/"+name, logins); err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	return &logical.Response{
		Auth: &logical.Auth{
			DisplayName:  name,
			Policies:     []string{"default"},
			Metadata:     map[string]string{"name": name, "issued_by": b.version},
			InternalData: map[string]interface{}{"name": name},
			LeaseOptions: logical.LeaseOptions{TTL: time.Hour},
		},
		Data: map[string]interface{}{"logins": logins},
	}, nil
}

// Describe is the one-line start-up log of a plugin process.
func Describe(kind, version string, multiplexed bool) string {
	return fmt.Sprintf("sdkplugin %s %s starting (multiplexed=%t)", kind, version, multiplexed)
}
