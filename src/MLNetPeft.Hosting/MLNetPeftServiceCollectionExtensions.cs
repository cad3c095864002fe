using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MLNetPeft.Hosting.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.Hosting.Training;

// In the namespace of IServiceCollection, as Microsoft.Extensions' own registration methods are, so that they show up
// where services are registered without another using.
namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the library's saved models, prediction engine pools, chat clients and embedding generators.</summary>
public static class MLNetPeftServiceCollectionExtensions
{
    /// <summary>
    /// Registers the models of the configuration section <paramref name="sectionPath"/> (by default <c>MLNetPeft</c>:
    /// <c>"MLNetPeft": { "Models": { "name": { "Path": "model.zip" } } }</c>): the settings are validated when the host
    /// starts (a failure names the setting), every model is loaded then (a zip that does not load stops the start), and
    /// <see cref="ModelRegistry"/> and <see cref="PredictionEnginePool{TData,TPrediction}"/> are served as singletons.
    /// </summary>
    public static IServiceCollection AddMLNetPeftModels(this IServiceCollection services, IConfiguration configuration,
        string sectionPath = MLNetPeftHostingOptions.SectionName)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentException.ThrowIfNullOrEmpty(sectionPath);
        services.AddOptions<MLNetPeftHostingOptions>().Bind(configuration.GetSection(sectionPath)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<MLNetPeftHostingOptions>>(sp => new ModelRegistrationValidator(sectionPath, sp.GetService<IHostEnvironment>()));
        services.TryAddSingleton(sp => new ModelRegistry(sp.GetRequiredService<IOptions<MLNetPeftHostingOptions>>(),
            sp.GetService<IHostEnvironment>(), sp.GetService<ILogger<ModelRegistry>>()));
        services.TryAddSingleton(typeof(PredictionEnginePool<,>));
        services.AddHostedService<ModelPreloader>();
        return services;
    }

    /// <summary>
    /// Registers an <see cref="IChatClient"/> over the registered generation model <paramref name="modelName"/> (keyed by
    /// <paramref name="serviceKey"/> when given); the builder returned adds Microsoft.Extensions.AI middleware
    /// (<c>.UseLogging()</c>, <c>.UseDistributedCache()</c>, ...).
    /// </summary>
    public static ChatClientBuilder AddMLNetPeftChatClient(this IServiceCollection services, string modelName, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(modelName);
        IChatClient Create(IServiceProvider sp) => new TextGenerationChatClient(sp.GetRequiredService<ModelRegistry>(), modelName);
        return serviceKey is null ? services.AddChatClient(Create) : services.AddKeyedChatClient(serviceKey, Create);
    }

    /// <summary>
    /// Registers an <see cref="IEmbeddingGenerator{TInput,TEmbedding}"/> over the registered embedding model
    /// <paramref name="modelName"/> (keyed by <paramref name="serviceKey"/> when given), with its builder for middleware.
    /// </summary>
    public static EmbeddingGeneratorBuilder<string, Embedding<float>> AddMLNetPeftEmbeddingGenerator(this IServiceCollection services, string modelName,
        object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(modelName);
        IEmbeddingGenerator<string, Embedding<float>> Create(IServiceProvider sp) => new RegisteredEmbeddingGenerator(sp.GetRequiredService<ModelRegistry>(), modelName);
        return serviceKey is null ? services.AddEmbeddingGenerator(Create) : services.AddKeyedEmbeddingGenerator(serviceKey, Create);
    }

    /// <summary>
    /// Runs a training job in the host (a <see cref="BackgroundService"/>): <paramref name="plan"/> builds the estimator,
    /// passing its options through <see cref="TrainingJobContext.Configure{T}"/>; progress goes to the log; when the host
    /// stops mid-run a checkpoint is written and the next start resumes from it; the fitted model is saved atomically to
    /// <see cref="TrainingJobOptions.OutputPath"/> (where a registered model with file watching picks it up). The job's
    /// <see cref="TrainingJobStatus"/> is a keyed singleton under <paramref name="name"/>.
    /// </summary>
    public static IServiceCollection AddMLNetPeftTrainingJob(this IServiceCollection services, string name, Action<TrainingJobOptions> configure,
        Func<IServiceProvider, TrainingJobContext, TrainingJobPlan> plan)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(configure);
        ArgumentNullException.ThrowIfNull(plan);
        var options = new TrainingJobOptions();
        configure(options);
        options.Validate(name);
        services.AddKeyedSingleton(name, (sp, _) =>
        {
            var environment = sp.GetService<IHostEnvironment>();
            return new TrainingJobStatus(name, ModelRegistrationValidator.ResolvePath(options.OutputPath!, environment),
                ModelRegistrationValidator.ResolvePath(options.CheckpointFolder!, environment));
        });
        services.AddSingleton<IHostedService>(sp => new TrainingJobService(sp.GetRequiredKeyedService<TrainingJobStatus>(name), options, plan, sp,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger($"MLNetPeft.Hosting.Training.{name}")));
        return services;
    }

    /// <summary>Loads every registered model when the host starts, so that a model that does not load stops the start.</summary>
    private sealed class ModelPreloader(ModelRegistry registry) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken) => Task.Run(registry.LoadAll, cancellationToken);
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
