package baoplugin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/ioutil"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/golang/protobuf/ptypes/timestamp"
	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"vaultpluginshim/baoplugin/dbpb"
	"vaultpluginshim/baoplugin/logicalpb"
)

// DatabaseType is what Type() answers.
const DatabaseType = "shimdb"

// ServeDatabase runs the dbplugin v5 database plugin.
func ServeDatabase(version string) {
	logger := newLogger("database", version)
	logger.Info("baoplugin starting", "kind", "database", "pid", os.Getpid(), "transport", transport())
	serve(databaseHandshake, "database", logger, func(_ *plugin.GRPCBroker, s *grpc.Server) error {
		dbpb.RegisterDatabaseServer(s, &database{version: version, log: logger})
		logicalpb.RegisterPluginVersionServer(s, versionServer{version})
		return nil
	})
}

// database keeps its users as <directory>/<username>.json files.
type database struct {
	version string
	log     hclog.Logger

	mu  sync.Mutex
	dir string
}

// user is one user file.
type user struct {
	Username       string   `json:"username"`
	PasswordSHA256 string   `json:"password_sha256"`
	Expiration     string   `json:"expiration,omitempty"`
	Role           string   `json:"role"`
	DisplayName    string   `json:"display_name"`
	Statements     []string `json:"statements,omitempty"`
	CreatedBy      string   `json:"created_by"`
	UpdatedBy      string   `json:"updated_by,omitempty"`
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9]+`)

func (d *database) Initialize(ctx context.Context, req *dbpb.InitializeRequest) (*dbpb.InitializeResponse, error) {
	dir := ""
	if req.ConfigData != nil {
		if v, ok := req.ConfigData.Fields["directory"]; ok {
			dir = v.GetStringValue()
		}
	}
	if dir == "" || !filepath.IsAbs(dir) {
		return nil, status.Error(codes.InvalidArgument,
			"connection parameter \"directory\" must be an absolute path (the directory that holds the users)")
	}
	if req.VerifyConnection {
		probe, err := ioutil.TempFile(dir, ".probe-")
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "cannot write in directory %s: %v", dir, err)
		}
		probe.Close()
		os.Remove(probe.Name())
	}
	d.mu.Lock()
	d.dir = dir
	d.mu.Unlock()
	d.log.Info("initialized", "directory", dir, "verified", req.VerifyConnection)
	return &dbpb.InitializeResponse{ConfigData: req.ConfigData}, nil
}

func (d *database) directory() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dir == "" {
		return "", status.Error(codes.FailedPrecondition, "not initialized")
	}
	return d.dir, nil
}

func (d *database) userPath(dir, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return "", status.Errorf(codes.InvalidArgument, "bad username %q", name)
	}
	return filepath.Join(dir, name+".json"), nil
}

func writeUser(path string, u user) error {
	raw, err := json.MarshalIndent(u, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := ioutil.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func hashPassword(p string) string {
	sum := sha256.Sum256([]byte(p))
	return hex.EncodeToString(sum[:])
}

func formatExpiration(ts *timestamp.Timestamp) string {
	if ts == nil {
		return ""
	}
	return time.Unix(ts.Seconds, int64(ts.Nanos)).UTC().Format(time.RFC3339)
}

func (d *database) NewUser(ctx context.Context, req *dbpb.NewUserRequest) (*dbpb.NewUserResponse, error) {
	dir, err := d.directory()
	if err != nil {
		return nil, err
	}
	if req.Password == "" {
		return nil, status.Error(codes.InvalidArgument, "no password")
	}
	role, display := "", ""
	if req.UsernameConfig != nil {
		role, display = req.UsernameConfig.RoleName, req.UsernameConfig.DisplayName
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, status.Errorf(codes.Internal, "random: %v", err)
	}
	// e.g. "v1-0-0-readonly-1a2b3c4d": which version made the user shows in its name.
	name := strings.Trim(unsafeChars.ReplaceAllString(strings.ToLower(d.version+"-"+role), "-"), "-") +
		"-" + hex.EncodeToString(suffix)
	path, err := d.userPath(dir, name)
	if err != nil {
		return nil, err
	}
	u := user{Username: name, PasswordSHA256: hashPassword(req.Password), Role: role,
		DisplayName: display, Expiration: formatExpiration(req.Expiration), CreatedBy: d.version}
	if req.Statements != nil {
		u.Statements = req.Statements.Commands
	}
	if err := writeUser(path, u); err != nil {
		return nil, status.Errorf(codes.Internal, "create user %s: %v", name, err)
	}
	d.log.Info("user created", "username", name, "role", role)
	return &dbpb.NewUserResponse{Username: name}, nil
}

func (d *database) UpdateUser(ctx context.Context, req *dbpb.UpdateUserRequest) (*dbpb.UpdateUserResponse, error) {
	dir, err := d.directory()
	if err != nil {
		return nil, err
	}
	path, err := d.userPath(dir, req.Username)
	if err != nil {
		return nil, err
	}
	raw, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "no user %s: %v", req.Username, err)
	}
	var u user
	if err := json.Unmarshal(raw, &u); err != nil {
		return nil, status.Errorf(codes.Internal, "user file %s: %v", path, err)
	}
	if req.Password != nil {
		u.PasswordSHA256 = hashPassword(req.Password.NewPassword)
	}
	if req.Expiration != nil {
		u.Expiration = formatExpiration(req.Expiration.NewExpiration)
	}
	u.UpdatedBy = d.version
	if err := writeUser(path, u); err != nil {
		return nil, status.Errorf(codes.Internal, "update user %s: %v", req.Username, err)
	}
	return &dbpb.UpdateUserResponse{}, nil
}

// DeleteUser is idempotent: revoking a user that is already gone succeeds.
func (d *database) DeleteUser(ctx context.Context, req *dbpb.DeleteUserRequest) (*dbpb.DeleteUserResponse, error) {
	dir, err := d.directory()
	if err != nil {
		return nil, err
	}
	path, err := d.userPath(dir, req.Username)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "delete user %s: %v", req.Username, err)
	}
	d.log.Info("user deleted", "username", req.Username)
	return &dbpb.DeleteUserResponse{}, nil
}

func (d *database) Type(context.Context, *dbpb.Empty) (*dbpb.TypeResponse, error) {
	return &dbpb.TypeResponse{Type: DatabaseType}, nil
}

func (d *database) Close(context.Context, *dbpb.Empty) (*dbpb.Empty, error) {
	return &dbpb.Empty{}, nil
}
