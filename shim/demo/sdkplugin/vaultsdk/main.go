// Command vaultsdk is the secrets engine of ../engine written against HashiCorp's
// github.com/hashicorp/vault/sdk instead of OpenBao's SDK, to run under OpenBao. It is its
// own module: the two SDKs' dependency graphs cannot be resolved together (go mod tidy:
// "ambiguous import: found package cloud.google.com/go/compute/metadata in multiple modules").
//
// Paths: version (read), kv/ (list), kv/<key> (create/update with an existence check, read,
// delete), as in ../engine. Set at build time:
//
//	go build -ldflags "-X main.version=v1.0.0 -X main.multiplex=true"
package main

import (
	"context"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

var (
	version   = "v0.0.0"
	multiplex = "false"
)

type backend struct{ *framework.Backend }

type record struct {
	Value     string `json:"value"`
	WrittenBy string `json:"written_by"`
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := &backend{}
	b.Backend = &framework.Backend{
		Help:           "vault-plugin-shim's SDK test engine on HashiCorp's vault/sdk " + version,
		BackendType:    logical.TypeLogical,
		RunningVersion: version,
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
		},
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *backend) readVersion(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	exe, _ := os.Executable()
	return &logical.Response{Data: map[string]interface{}{
		"version": version, "pid": os.Getpid(), "exe": exe, "multiplexed": multiplex == "true", "sdk": "hashicorp",
	}}, nil
}

func (b *backend) exists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	entry, err := req.Storage.Get(ctx, "kv/"+d.Get("key").(string))
	return entry != nil, err
}

func (b *backend) write(operation string) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		key := d.Get("key").(string)
		entry, err := logical.StorageEntryJSON("kv/"+key, record{Value: d.Get("value").(string), WrittenBy: version})
		if err != nil {
			return nil, err
		}
		if err := req.Storage.Put(ctx, entry); err != nil {
			return nil, err
		}
		return &logical.Response{Data: map[string]interface{}{"key": key, "operation": operation, "written_by": version}}, nil
	}
}

func (b *backend) read(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	entry, err := req.Storage.Get(ctx, "kv/"+d.Get("key").(string))
	if err != nil || entry == nil {
		return nil, err
	}
	var r record
	if err := entry.DecodeJSON(&r); err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{"value": r.Value, "written_by": r.WrittenBy, "served_by": version}}, nil
}

func (b *backend) remove(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return nil, req.Storage.Delete(ctx, "kv/"+d.Get("key").(string))
}

func (b *backend) list(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	keys, err := req.Storage.List(ctx, "kv/")
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(keys), nil
}

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: os.Stderr, JSONFormat: true})
	logger.Info("sdkplugin vaultsdk " + version + " starting (multiplexed=" + multiplex + ")")
	serve := plugin.Serve
	if multiplex == "true" {
		serve = plugin.ServeMultiplex
	}
	if err := serve(&plugin.ServeOpts{BackendFactoryFunc: factory, Logger: logger}); err != nil {
		logger.Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}
