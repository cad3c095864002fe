using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Primitives;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML;

namespace MLNetPeft.Hosting.Models;

/// <summary>
/// The saved models of a host, by name (<see cref="MLNetPeftHostingOptions.Models"/>). Each is loaded once with
/// <c>mlContext.Model.Load</c> and shared; callers hold a <see cref="ModelLease"/> while they use one, so that a reload
/// (the file was replaced) never disposes a model under a running request: the old version is disposed when its last
/// lease ends. A replacement that fails to load is logged and the running version kept.
/// </summary>
public sealed class ModelRegistry : IDisposable
{
    private readonly MLContext _mlContext;
    private readonly ILogger _logger;
    private readonly Dictionary<string, Slot> _slots = new(StringComparer.OrdinalIgnoreCase);
    private bool _disposed;

    public ModelRegistry(IOptions<MLNetPeftHostingOptions> options, IHostEnvironment? environment = null, ILogger<ModelRegistry>? logger = null, MLContext? mlContext = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _mlContext = mlContext ?? new MLContext(seed: 0);
        // Checked here too, for a registry built without the host (whose start validates the same way).
        var check = new ModelRegistrationValidator(MLNetPeftHostingOptions.SectionName, environment).Validate(Options.DefaultName, options.Value);
        if (check.Failed) throw new OptionsValidationException(Options.DefaultName, typeof(MLNetPeftHostingOptions), check.Failures);
        foreach (var (name, registration) in options.Value.Models)
            _slots[name] = new Slot(this, name, registration, ModelRegistrationValidator.ResolvePath(registration.Path!, environment));
    }

    /// <summary>The registered names, as configured.</summary>
    public IReadOnlyCollection<string> Names => _slots.Values.Select(s => s.Name).ToArray();

    /// <summary>Raised after a model was loaded again because its file changed (name, new version).</summary>
    public event Action<string, int>? Reloaded;

    /// <summary>The registration of <paramref name="name"/> (its resolved path and pool size).</summary>
    public ModelRegistrationOptions GetRegistration(string name) => Find(name).Registration;

    /// <summary>
    /// The current version of <paramref name="name"/>, loaded now if it is not yet; dispose the lease when done with it.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No model of that name is registered (the message lists the ones that are).</exception>
    public ModelLease Acquire(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Find(name).Acquire();
    }

    /// <summary>Loads every registered model that is not loaded yet (the host's start does this, so a bad zip stops it).</summary>
    public void LoadAll()
    {
        foreach (var slot in _slots.Values) slot.Acquire().Dispose();
    }

    /// <summary>Loads <paramref name="name"/> again from its file now, as a change of the file does.</summary>
    /// <returns>Whether the new version replaced the old one (false: loading failed, the old one still serves).</returns>
    public bool Reload(string name) => Find(name).Reload();

    private Slot Find(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (_slots.TryGetValue(name, out var slot)) return slot;
        throw new KeyNotFoundException(_slots.Count == 0
            ? $"No model named '{name}' is registered: the configuration registers none (section {MLNetPeftHostingOptions.SectionName}:Models)."
            : $"No model named '{name}' is registered; the registered models are: {string.Join(", ", _slots.Values.Select(s => s.Name))}.");
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var slot in _slots.Values) slot.Dispose();
    }

    /// <summary>One registration: its current version, and the watch on its file.</summary>
    private sealed class Slot(ModelRegistry registry, string name, ModelRegistrationOptions registration, string fullPath) : IDisposable
    {
        private readonly object _gate = new();
        private LoadedModel? _current;
        private int _version;
        private PhysicalFileProvider? _files;
        private IDisposable? _watch;

        public string Name { get; } = name;
        public ModelRegistrationOptions Registration { get; } = new() { Path = fullPath, WatchForChanges = registration.WatchForChanges, MaxPooledEngines = registration.MaxPooledEngines };

        public ModelLease Acquire()
        {
            lock (_gate)
            {
                if (_current is null)
                {
                    _current = Load();
                    if (Registration.WatchForChanges) Watch();
                }
                return _current.Lease();
            }
        }

        public bool Reload()
        {
            LoadedModel loaded;
            try { loaded = Load(); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                registry._logger.LogError(e, "Model {ModelName}: the changed file {ModelPath} did not load; version {Version} keeps serving.", Name, fullPath, _version);
                return false;
            }
            LoadedModel? old;
            lock (_gate)
            {
                old = _current;
                _current = loaded;
            }
            old?.Retire();
            registry._logger.LogInformation("Model {ModelName}: version {Version} loaded from {ModelPath}.", Name, loaded.Version, fullPath);
            registry.Reloaded?.Invoke(Name, loaded.Version);
            return true;
        }

        private LoadedModel Load()
        {
            ITransformer transformer;
            DataViewSchema inputSchema;
            try { transformer = registry._mlContext.Model.Load(fullPath, out inputSchema); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidDataException($"Model '{Name}': the file {fullPath} is not a model that loads with mlContext.Model.Load: {e.Message}", e);
            }
            int version = Interlocked.Increment(ref _version);
            registry._logger.LogDebug("Model {ModelName}: version {Version} read from {ModelPath}.", Name, version, fullPath);
            return new LoadedModel(Name, version, transformer, inputSchema, registry._mlContext, Registration.MaxPooledEngines);
        }

        // A change token fires once: each firing reloads and watches again. Replacing a file by rename raises it once
        // the new file is complete; a short delay lets an in-place writer finish before the file is read.
        private void Watch()
        {
            _files ??= new PhysicalFileProvider(Path.GetDirectoryName(fullPath)!);
            _watch = ChangeToken.OnChange(() => _files.Watch(Path.GetFileName(fullPath)), () =>
            {
                Thread.Sleep(200);
                if (!registry._disposed && File.Exists(fullPath)) Reload();
            });
        }

        public void Dispose()
        {
            _watch?.Dispose();
            _files?.Dispose();
            lock (_gate)
            {
                _current?.Retire();
                _current = null;
            }
        }
    }
}

/// <summary>
/// One loaded version of a registered model. It is disposed (its transformer and pooled engines) once it has been
/// replaced or the registry disposed, and no lease on it is left.
/// </summary>
public sealed class LoadedModel
{
    private readonly object _gate = new();
    private readonly Dictionary<(Type, Type), object> _enginePools = new();
    private int _leases;
    private bool _retired, _disposed;

    internal LoadedModel(string name, int version, ITransformer transformer, DataViewSchema inputSchema, MLContext mlContext, int maxPooledEngines)
    {
        Name = name;
        Version = version;
        Transformer = transformer;
        InputSchema = inputSchema;
        MLContext = mlContext;
        MaxPooledEngines = maxPooledEngines;
    }

    public string Name { get; }
    /// <summary>1 for the first load, one more for each reload.</summary>
    public int Version { get; }
    /// <summary>The loaded model, as <c>mlContext.Model.Load</c> returns it.</summary>
    public ITransformer Transformer { get; }
    /// <summary>The input schema saved with the model.</summary>
    public DataViewSchema InputSchema { get; }
    internal MLContext MLContext { get; }
    internal int MaxPooledEngines { get; }

    /// <summary>The first transformer of type <typeparamref name="T"/> in the model (itself, or a step of its chain), or null.</summary>
    public T? Find<T>() where T : class, ITransformer => Transformer.FindTransformer<T>();

    /// <summary>A cache of this version, made once per key (the engine pools of each row type pair).</summary>
    internal TValue GetOrAdd<TValue>((Type, Type) key, Func<TValue> create) where TValue : class
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_enginePools.TryGetValue(key, out var value)) _enginePools[key] = value = create();
            return (TValue)value;
        }
    }

    internal ModelLease Lease()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _leases++;
        }
        return new ModelLease(this);
    }

    internal void Release()
    {
        bool dispose;
        lock (_gate) dispose = --_leases == 0 && _retired && !_disposed;
        if (dispose) DisposeNow();
    }

    internal void Retire()
    {
        bool dispose;
        lock (_gate)
        {
            _retired = true;
            dispose = _leases == 0 && !_disposed;
        }
        if (dispose) DisposeNow();
    }

    private void DisposeNow()
    {
        object[] pools;
        lock (_gate)
        {
            _disposed = true;
            pools = _enginePools.Values.ToArray();
            _enginePools.Clear();
        }
        foreach (var pool in pools) (pool as IDisposable)?.Dispose();
        (Transformer as IDisposable)?.Dispose();
    }

    /// <summary>Whether this version has been disposed (it was replaced or the registry disposed, and no lease was left).</summary>
    public bool IsDisposed { get { lock (_gate) return _disposed; } }
}

/// <summary>Use of one version of a registered model; dispose it when done (once).</summary>
public sealed class ModelLease : IDisposable
{
    private LoadedModel? _model;

    internal ModelLease(LoadedModel model) => _model = model;

    /// <summary>The leased version.</summary>
    public LoadedModel Model => _model ?? throw new ObjectDisposedException(nameof(ModelLease));

    public void Dispose() => Interlocked.Exchange(ref _model, null)?.Release();
}
