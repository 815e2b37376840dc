package baoplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/golang/protobuf/ptypes/timestamp"
	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"vaultpluginshim/baoplugin/logicalpb"
	"vaultpluginshim/baoplugin/pb"
)

// OpenBao's logical.BackendType values (sdk/logical/logical.go).
const (
	typeLogical    = 1
	typeCredential = 2
)

// OpenBao's error types (sdk/plugin/pb/translation.go), as carried in ProtoError.
const (
	errTypeCoded           = 3
	errTypeUnsupportedOp   = 5
	errTypeUnsupportedPath = 6
	errTypeInternal        = 2
	storageCallTimeout     = 30 * time.Second
	kvPrefix               = "kv/"
	loginCountPrefix       = "logins/"
)

// ServeSecret runs the secrets engine; it returns when OpenBao stops the plugin.
func ServeSecret(version string) { serveBackend("secret", typeLogical, version) }

// ServeAuth runs the auth method (the same backend, type credential, plus login).
func ServeAuth(version string) { serveBackend("auth", typeCredential, version) }

func serveBackend(kind string, backendType uint32, version string) {
	logger := newLogger(kind, version)
	logger.Info("baoplugin starting", "kind", kind, "pid", os.Getpid(), "transport", transport())
	serve(backendHandshake, "backend", logger, func(broker *plugin.GRPCBroker, s *grpc.Server) error {
		b := &backend{kind: kind, backendType: backendType, version: version, broker: broker, log: logger}
		pb.RegisterBackendServer(s, b)
		logicalpb.RegisterPluginVersionServer(s, versionServer{version})
		return nil
	})
}

type backend struct {
	kind        string
	backendType uint32
	version     string
	broker      *plugin.GRPCBroker
	log         hclog.Logger

	mu      sync.Mutex
	storage pb.StorageClient
	conn    *grpc.ClientConn
}

// Setup dials the broker id on which OpenBao serves Storage (and SystemView).
func (b *backend) Setup(ctx context.Context, args *pb.SetupArgs) (*pb.SetupReply, error) {
	conn, err := b.broker.Dial(args.BrokerId)
	if err != nil {
		b.log.Error("cannot dial the host's broker id for Storage", "broker_id", args.BrokerId, "error", err.Error())
		return &pb.SetupReply{Err: fmt.Sprintf("dial broker id %d for Storage: %v", args.BrokerId, err)}, nil
	}
	b.mu.Lock()
	if b.conn != nil {
		b.conn.Close()
	}
	b.conn = conn
	b.storage = pb.NewStorageClient(conn)
	b.mu.Unlock()
	b.log.Info("setup: storage connected through the broker", "broker_id", args.BrokerId,
		"backend_uuid", args.BackendUUID)
	return &pb.SetupReply{}, nil
}

func (b *backend) Type(context.Context, *pb.Empty) (*pb.TypeReply, error) {
	return &pb.TypeReply{Type: b.backendType}, nil
}

func (b *backend) SpecialPaths(context.Context, *pb.Empty) (*pb.SpecialPathsReply, error) {
	paths := &pb.Paths{}
	if b.backendType == typeCredential {
		paths.Unauthenticated = []string{"login"}
	}
	return &pb.SpecialPathsReply{Paths: paths}, nil
}

func (b *backend) Initialize(context.Context, *pb.InitializeArgs) (*pb.InitializeReply, error) {
	return &pb.InitializeReply{}, nil
}

func (b *backend) Cleanup(context.Context, *pb.Empty) (*pb.Empty, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.Close()
		b.conn, b.storage = nil, nil
	}
	return &pb.Empty{}, nil
}

func (b *backend) InvalidateKey(context.Context, *pb.InvalidateKeyArgs) (*pb.Empty, error) {
	return &pb.Empty{}, nil
}

// HandleExistenceCheck says "no existence check", so OpenBao treats writes as update.
func (b *backend) HandleExistenceCheck(context.Context, *pb.HandleExistenceCheckArgs) (*pb.HandleExistenceCheckReply, error) {
	return &pb.HandleExistenceCheckReply{CheckFound: false}, nil
}

func (b *backend) HandleRequest(ctx context.Context, args *pb.HandleRequestArgs) (*pb.HandleRequestReply, error) {
	req := args.Request
	if req == nil {
		return protoErr(errTypeCoded, 400, "no request"), nil
	}
	op, path := req.Operation, req.Path
	b.log.Debug("request", "operation", op, "path", path)
	switch op {
	case "resolve-path", "rollback":
		// OpenBao asks these for quotas and of its rollback manager (every minute and
		// at mount); this backend has no roles and keeps no write-ahead log.
		return &pb.HandleRequestReply{}, nil
	}
	switch {
	case path == "version":
		if op != "read" {
			return protoErr(errTypeUnsupportedOp, 0, "version is read-only"), nil
		}
		return dataReply(map[string]interface{}{
			"version":   b.version,
			"kind":      b.kind,
			"pid":       os.Getpid(),
			"exe":       executable(),
			"transport": transport(),
			"storage":   b.probeStorage(ctx),
		})
	case path == "login" && b.backendType == typeCredential:
		if op != "update" && op != "create" {
			return protoErr(errTypeUnsupportedOp, 0, "login takes a write"), nil
		}
		return b.login(ctx, req)
	case path == "kv" || path == kvPrefix:
		if op != "list" {
			return protoErr(errTypeUnsupportedOp, 0, "kv/ can only be listed"), nil
		}
		return b.list(ctx)
	case strings.HasPrefix(path, kvPrefix):
		key := strings.TrimPrefix(path, kvPrefix)
		if key == "" || strings.Contains(key, "/") {
			return protoErr(errTypeCoded, 400, "a key is one path segment: kv/<key>"), nil
		}
		switch op {
		case "read":
			return b.read(ctx, key)
		case "create", "update":
			return b.write(ctx, key, req.Data)
		case "delete":
			return b.remove(ctx, key)
		}
		return protoErr(errTypeUnsupportedOp, 0, "kv/<key> takes read, write and delete"), nil
	}
	return protoErr(errTypeUnsupportedPath, 0, "unsupported path"), nil
}

func (b *backend) storageClient() pb.StorageClient {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.storage
}

// probeStorage makes one Storage call ("ok" or the error): the broker connection is
// dialled lazily, so only a call shows that it works.
func (b *backend) probeStorage(ctx context.Context) string {
	s := b.storageClient()
	if s == nil {
		return "not set up"
	}
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	reply, err := s.List(ctx, &pb.StorageListArgs{Prefix: kvPrefix})
	if err == nil && reply.Err != "" {
		err = fmt.Errorf("%s", reply.Err)
	}
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func (b *backend) needStorage() (pb.StorageClient, *pb.HandleRequestReply) {
	s := b.storageClient()
	if s == nil {
		return nil, protoErr(errTypeInternal, 0, "storage is not set up (Setup was not called)")
	}
	return s, nil
}

// stored is what kv/<key> keeps in OpenBao's storage.
type stored struct {
	Data      map[string]interface{} `json:"data"`
	WrittenBy string                 `json:"written_by"`
}

func (b *backend) write(ctx context.Context, key, body string) (*pb.HandleRequestReply, error) {
	s, fail := b.needStorage()
	if fail != nil {
		return fail, nil
	}
	data := map[string]interface{}{}
	if body != "" {
		if err := json.Unmarshal([]byte(body), &data); err != nil {
			return protoErr(errTypeCoded, 400, "request data is not a JSON object: "+err.Error()), nil
		}
	}
	value, _ := json.Marshal(stored{Data: data, WrittenBy: b.version})
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	reply, err := s.Put(ctx, &pb.StoragePutArgs{Entry: &pb.StorageEntry{Key: kvPrefix + key, Value: value}})
	if err == nil && reply.Err != "" {
		err = fmt.Errorf("%s", reply.Err)
	}
	if err != nil {
		b.log.Error("storage put failed", "key", key, "error", err.Error())
		return protoErr(errTypeInternal, 0, "storage put: "+err.Error()), nil
	}
	return dataReply(map[string]interface{}{"key": key, "written_by": b.version})
}

func (b *backend) read(ctx context.Context, key string) (*pb.HandleRequestReply, error) {
	s, fail := b.needStorage()
	if fail != nil {
		return fail, nil
	}
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	reply, err := s.Get(ctx, &pb.StorageGetArgs{Key: kvPrefix + key})
	if err == nil && reply.Err != "" {
		err = fmt.Errorf("%s", reply.Err)
	}
	if err != nil {
		b.log.Error("storage get failed", "key", key, "error", err.Error())
		return protoErr(errTypeInternal, 0, "storage get: "+err.Error()), nil
	}
	if reply.Entry == nil {
		return &pb.HandleRequestReply{}, nil // no response: OpenBao answers 404
	}
	var st stored
	if err := json.Unmarshal(reply.Entry.Value, &st); err != nil {
		return protoErr(errTypeInternal, 0, "stored entry is not ours: "+err.Error()), nil
	}
	out := map[string]interface{}{}
	for k, v := range st.Data {
		out[k] = v
	}
	out["written_by"] = st.WrittenBy
	out["served_by"] = b.version
	return dataReply(out)
}

func (b *backend) remove(ctx context.Context, key string) (*pb.HandleRequestReply, error) {
	s, fail := b.needStorage()
	if fail != nil {
		return fail, nil
	}
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	reply, err := s.Delete(ctx, &pb.StorageDeleteArgs{Key: kvPrefix + key})
	if err == nil && reply.Err != "" {
		err = fmt.Errorf("%s", reply.Err)
	}
	if err != nil {
		return protoErr(errTypeInternal, 0, "storage delete: "+err.Error()), nil
	}
	return &pb.HandleRequestReply{}, nil
}

func (b *backend) list(ctx context.Context) (*pb.HandleRequestReply, error) {
	s, fail := b.needStorage()
	if fail != nil {
		return fail, nil
	}
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	reply, err := s.List(ctx, &pb.StorageListArgs{Prefix: kvPrefix})
	if err == nil && reply.Err != "" {
		err = fmt.Errorf("%s", reply.Err)
	}
	if err != nil {
		return protoErr(errTypeInternal, 0, "storage list: "+err.Error()), nil
	}
	keys := reply.Keys
	if keys == nil {
		keys = []string{}
	}
	return dataReply(map[string]interface{}{"keys": keys})
}

// login issues a token for any non-empty name and counts logins in Storage.
func (b *backend) login(ctx context.Context, req *pb.Request) (*pb.HandleRequestReply, error) {
	var body struct {
		Name string `json:"name"`
	}
	if req.Data != "" {
		if err := json.Unmarshal([]byte(req.Data), &body); err != nil {
			return protoErr(errTypeCoded, 400, "request data is not a JSON object: "+err.Error()), nil
		}
	}
	if body.Name == "" || strings.Contains(body.Name, "/") {
		return protoErr(errTypeCoded, 400, "login needs a name (one path segment)"), nil
	}
	s, fail := b.needStorage()
	if fail != nil {
		return fail, nil
	}
	ctx, cancel := context.WithTimeout(ctx, storageCallTimeout)
	defer cancel()
	count := 0
	got, err := s.Get(ctx, &pb.StorageGetArgs{Key: loginCountPrefix + body.Name})
	if err == nil && got.Err == "" && got.Entry != nil {
		_ = json.Unmarshal(got.Entry.Value, &count)
	}
	count++
	value, _ := json.Marshal(count)
	put, err := s.Put(ctx, &pb.StoragePutArgs{Entry: &pb.StorageEntry{Key: loginCountPrefix + body.Name, Value: value}})
	if err == nil && put.Err != "" {
		err = fmt.Errorf("%s", put.Err)
	}
	if err != nil {
		return protoErr(errTypeInternal, 0, "storage put: "+err.Error()), nil
	}
	data, _ := json.Marshal(map[string]interface{}{"logins": count, "issued_by": b.version})
	return &pb.HandleRequestReply{Response: &pb.Response{
		Data: string(data),
		Auth: &pb.Auth{
			DisplayName: body.Name,
			Policies:    []string{"default"},
			Metadata:    map[string]string{"name": body.Name, "issued_by": b.version},
			LeaseOptions: &pb.LeaseOptions{
				TTL: int64(time.Hour), // nanoseconds, as time.Duration
				// OpenBao converts this with ptypes.Timestamp, which refuses nil.
				IssueTime: &timestamp.Timestamp{Seconds: time.Now().Unix()},
			},
		},
	}}, nil
}

func dataReply(data map[string]interface{}) (*pb.HandleRequestReply, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	return &pb.HandleRequestReply{Response: &pb.Response{Data: string(raw)}}, nil
}

func protoErr(kind uint32, code int64, msg string) *pb.HandleRequestReply {
	return &pb.HandleRequestReply{Err: &pb.ProtoError{ErrType: kind, ErrMsg: msg, ErrCode: code}}
}
